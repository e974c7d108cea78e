"""Every job runs in a confined child process; see :mod:`.supervisor` and :mod:`.confine`.

``limits``      what a job may use (memory, CPU, files, processes)
``confine``     the walls a child builds around itself (namespaces, view, identity)
``landlock``    the kernel's path allow-list, as a second file-system wall
``seccomp``     the system calls a job may not make
``seats``       a uid and cores of its own for every running job
``disk``        a job's own disk: an ext4 image the child mounts
``zygote``      a fork server per framework: a fresh process per job in milliseconds
``channel``     the one way anything comes back from a job: a framed, bounded pipe
``supervisor``  starting children, handing them jobs, taking back what they made
``child``       the child's side of the protocol
``removal``     deleting what a job could have shaped, without following it anywhere
"""
from edgeai.sandbox.limits import Limits, limits_from_settings
from edgeai.sandbox.supervisor import JobFailed, Sandbox, missing_walls

__all__ = ["JobFailed", "Limits", "Sandbox", "limits_from_settings", "missing_walls"]
