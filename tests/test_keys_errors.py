"""One error base: every error the keys package raises on purpose is a ``keys.EscrowError``."""

import pytest

import keys
from keys import errors


def test_every_error_class_is_an_escrow_error():
    classes = [getattr(errors, name) for name in errors.__all__]
    assert len(classes) == 13
    for cls in classes:
        assert issubclass(cls, keys.EscrowError), cls
    assert not issubclass(keys.EscrowError, (KeyError, OSError, ValueError))


@pytest.mark.parametrize("module, name", [
    ("keys.audit", "AuditError"), ("keys.directory", "DirectoryError"), ("keys.identity", "IdentityError"),
    ("keys.record", "RecordError"), ("keys.wrap", "UnwrapError"), ("keys.vault", "VaultError"),
    ("keys.unmask", "UnmaskError"),
])
def test_errors_are_one_class_wherever_they_are_imported_from(module, name):
    import importlib

    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_errors_raised_by_the_package_are_caught_by_the_base(tmp_path):
    with pytest.raises(keys.EscrowError, match="no usable gateway.key"):
        keys.KeyDirectory.open(tmp_path / "nowhere")
    with pytest.raises(keys.EscrowError, match="not a vault"):
        keys.VaultStore.open(tmp_path / "nowhere")
    with pytest.raises(keys.EscrowError, match="wrong passphrase"):
        keys.PrivateIdentity.load(tmp_path / "nowhere.key", "pw")
