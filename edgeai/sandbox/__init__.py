"""Every job runs in a confined child process; see :mod:`.supervisor` and :mod:`.confine`.

``limits``      what a job may use (memory, CPU, files, processes)
``confine``     the walls a child builds around itself (namespaces, view, identity)
``landlock``    the kernel's path allow-list, as a second file-system wall
``seccomp``     the system calls a job may not make
``supervisor``  starting children, handing them jobs, collecting what they made
``child``       the child's side of the protocol
``removal``     deleting what a job could have shaped, without following it anywhere
"""
from edgeai.sandbox.limits import Limits, limits_from_settings
from edgeai.sandbox.supervisor import JobFailed, Sandbox, missing_walls, sandbox_user

__all__ = ["JobFailed", "Limits", "Sandbox", "limits_from_settings", "missing_walls",
           "sandbox_user"]
