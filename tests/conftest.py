import pytest


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """An empty XPCNN_DATA for one test, so nothing reads or writes ~/.cache/xpcnn."""
    home = tmp_path / "xpcnn-data"
    monkeypatch.setenv("XPCNN_DATA", str(home))
    return home
