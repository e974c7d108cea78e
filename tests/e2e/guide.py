"""The user guide's models and files, made the way a user of the guide makes them."""
from __future__ import annotations

import textwrap
from pathlib import Path

GUIDE_NET_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            output = F.log_softmax(x, dim=1)
            return output
''')


def write_guide_pytorch_files(folder: Path, samples: int = 64) -> dict[str, Path]:
    """Write ``model.py``, ``mnist_cnn.pth`` (state_dict) and ``train_loader.pth``
    (a pickled DataLoader, as the guide saves it) into ``folder``."""
    import importlib.util

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    class_file = folder / "model.py"
    class_file.write_text(GUIDE_NET_SOURCE)
    spec = importlib.util.spec_from_file_location("guide_model_for_test", class_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.Net()
    weights = folder / "mnist_cnn.pth"
    torch.save(model.state_dict(), weights)
    data = torch.utils.data.TensorDataset(torch.randn(samples, 1, 28, 28),
                                          torch.randint(0, 10, (samples,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    dataset = folder / "train_loader.pth"
    torch.save(loader, dataset)
    return {"class_def": class_file, "weights": weights, "dataset": dataset}


def build_mnist_base(path: Path) -> Path:
    """The guide's Keras CNN (three Conv2D layers of 32/64/32 filters, 10 classes),
    compiled and saved with ``model.save('mnist_base.h5')``."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu", name="conv2d"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_1"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Conv2D(32, (3, 3), activation="relu", name="conv2d_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(100, activation="relu", name="dense"),
        keras.layers.Dense(10, activation="softmax", name="dense_1"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    model.save(path)
    return path
