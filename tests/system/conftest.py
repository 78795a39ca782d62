import pytest
from netkit import Daemon, Namespaces


@pytest.fixture
def namespaces():
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.cleanup()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(config_path, control=None, **kwargs) -> Daemon:
        daemon = Daemon(config_path, control)
        started.append(daemon)
        return daemon.start(**kwargs)

    try:
        yield start
    finally:
        for daemon in started:
            daemon.kill()
