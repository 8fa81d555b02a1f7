"""Identities and the key directory: real cryptography, tamper and wrong-key cases."""

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.cli import main
from keys.directory import DirectoryError, KeyDirectory
from keys.identity import IdentityError, PrivateIdentity, canonical


def test_identity_round_trip_and_file_protection(tmp_path):
    identity = PrivateIdentity.generate("alice", ["investigator", "viewer"])
    path = tmp_path / "alice.key"
    identity.save(path, "correct horse")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "correct horse" not in path.read_text()
    loaded = PrivateIdentity.load(path, "correct horse")
    assert loaded.public == identity.public
    message = b"sealed"
    assert loaded.signing.sign(message) == identity.signing.sign(message)  # Ed25519 is deterministic


def test_known_answer_with_fixed_salt_and_nonce(tmp_path):
    """Same keys, passphrase, salt and nonce: byte-identical files (the format is deterministic)."""
    identity = PrivateIdentity.generate("bob", ["auditor"])
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    identity.save(a, "pw", salt=b"s" * 16, nonce=b"n" * 12)
    identity.save(b, "pw", salt=b"s" * 16, nonce=b"n" * 12)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("damage", ["passphrase", "ciphertext", "header", "truncated", "not-json"])
def test_every_failure_is_the_same_opaque_error(tmp_path, damage):
    path = tmp_path / "carol.key"
    PrivateIdentity.generate("carol", ["privacy-officer"]).save(path, "pw")
    document = json.loads(path.read_text())
    passphrase = "pw"
    if damage == "passphrase":
        passphrase = "wrong"
    elif damage == "ciphertext":
        raw = bytearray(document["ciphertext"].encode())
        raw[10] = ord("A") if raw[10] != ord("A") else ord("B")
        document["ciphertext"] = raw.decode()
    elif damage == "header":
        document["name"] = "mallory"
    if damage == "truncated":
        path.write_text(path.read_text()[:100])
    elif damage == "not-json":
        path.write_bytes(os.urandom(64))
    else:
        path.write_text(json.dumps(document))
    with pytest.raises(IdentityError) as info:
        PrivateIdentity.load(path, passphrase)
    assert str(info.value) == f"cannot open identity {path}: wrong passphrase or not a valid identity file"


def test_names_and_roles_are_validated():
    with pytest.raises(ValueError, match="unknown role 'admin'"):
        PrivateIdentity.generate("dave", ["admin"])
    with pytest.raises(ValueError, match="identity name"):
        PrivateIdentity.generate("../etc", ["viewer"])


def test_directory_signed_and_tamper_evident(tmp_path):
    directory = KeyDirectory.init(tmp_path / "keys")
    alice = PrivateIdentity.generate("alice", ["investigator"]).public
    directory.add(alice)
    reopened = KeyDirectory.open(tmp_path / "keys")
    assert reopened.identity("alice") == alice and reopened.serial == 1
    assert [i.name for i in reopened.with_role("investigator")] == ["alice"]
    roster = tmp_path / "keys" / "roster.json"
    original = roster.read_text()
    # a role granted by hand
    document = json.loads(original)
    document["roster"]["identities"][0]["roles"] = ["investigator", "privacy-officer"]
    roster.write_text(json.dumps(document))
    with pytest.raises(DirectoryError, match="fails its signature check"):
        KeyDirectory.open(tmp_path / "keys")
    # re-signed with another key
    other = Ed25519PrivateKey.generate()
    document["signature"] = base64.b64encode(other.sign(canonical(document["roster"]))).decode()
    roster.write_text(json.dumps(document))
    with pytest.raises(DirectoryError, match="fails its signature check"):
        KeyDirectory.open(tmp_path / "keys")
    roster.write_text(original)
    assert KeyDirectory.open(tmp_path / "keys").serial == 1


def test_directory_refuses_to_overwrite_and_duplicate(tmp_path):
    KeyDirectory.init(tmp_path / "keys")
    with pytest.raises(DirectoryError, match="not empty"):
        KeyDirectory.init(tmp_path / "keys")
    directory = KeyDirectory.open(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("erin", ["viewer"]).public)
    with pytest.raises(DirectoryError, match="already exists"):
        directory.add(PrivateIdentity.generate("erin", ["auditor"]).public)


def test_cli_init_and_add_identity(tmp_path, capsys, monkeypatch):
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "s3cret pass")
    out = tmp_path / "frank.key"
    assert main(["keys", "add-identity", str(keys), "frank", "--role", "investigator",
                 "--role", "auditor", "--out", str(out)]) == 0
    assert KeyDirectory.open(keys).identity("frank").roles == ("auditor", "investigator")
    assert PrivateIdentity.load(out, "s3cret pass").public.name == "frank"
    # refusals: existing private file, unknown role, duplicate name
    assert main(["keys", "add-identity", str(keys), "gina", "--role", "viewer", "--out", str(out)]) == 2
    assert main(["keys", "add-identity", str(keys), "gina", "--role", "boss", "--out", str(tmp_path / "g.key")]) == 2
    assert main(["keys", "add-identity", str(keys), "frank", "--role", "viewer", "--out", str(tmp_path / "f2.key")]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite a private key file" in err
    assert "unknown role 'boss'" in err
    assert "an identity named 'frank' already exists" in err
    assert not (tmp_path / "g.key").exists() and not (tmp_path / "f2.key").exists()
    assert [i.name for i in KeyDirectory.open(keys).identities] == ["frank"]


def test_gateway_key_is_private_and_not_a_person(tmp_path):
    KeyDirectory.init(tmp_path / "keys")
    assert stat.S_IMODE((tmp_path / "keys" / "gateway.key").stat().st_mode) == 0o600
    key = (tmp_path / "keys" / "gateway.key").read_bytes()
    assert b"PRIVATE KEY" in key
    unused = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "keys" / "gateway.key").write_bytes(unused)
    with pytest.raises(DirectoryError, match="fails its signature check"):
        KeyDirectory.open(tmp_path / "keys")
