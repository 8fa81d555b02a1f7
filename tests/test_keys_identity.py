"""Identities and the key directory: real cryptography, tamper and wrong-key cases."""

import base64
import hashlib
import json
import os
import stat
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from keys.directory import DirectoryError, KeyDirectory
from keys.identity import (
    SUITE_MLKEM768_X25519,
    SUITE_X25519,
    IdentityError,
    PrivateIdentity,
    PublicIdentity,
    canonical,
)

# A classic identity file written by the code before post-quantum identities existed (X25519
# scalar 00..1f, Ed25519 seed 20..3f, passphrase "pw", salt "s"*16, nonce "n"*12).
CLASSIC_FILE = """{
  "format": "privacy-gateway-identity",
  "version": 1,
  "name": "kat",
  "kdf": {
    "name": "scrypt",
    "n": 32768,
    "r": 8,
    "p": 1,
    "salt": "c3Nzc3Nzc3Nzc3Nzc3Nzcw=="
  },
  "nonce": "bm5ubm5ubm5ubm5u",
  "ciphertext": "wgeW96RHNkmv6dhDjLaNP807niW+7go/N9mQ80nkjawaj96uJZQmJO7J+gCrwd8H7fxwlx08ekHK99KvzV4/EBDdj2JgLUVFKp1wnvp\
Rypz/DQZvijHAU4rWGZSiFhVWR8qcWrmUkGLuu9vOduzaJSFAtq/5o4+TzkEGT8sF73udW7XEp3wZMIMpcYdnMjGMvR+lV+CJeXocH8sKGAdqOIHK4+9ODnF\
5SxBU6JS+HOjbaE01tiSFreCKCPXW/n2fYoUzDZoKGYIDu82QTeJs8NCAOrVH/sb4Z1f3u5uoXuNCt6yrQyNVpmYpkqHiXABTJkNW6cyEKwhIxd6pOjKtHhW\
MAWGuAO069HysKa0YX3b7ftTTJj/D1T1lDDyQI1sYglV+kw=="
}
"""
#: a passphrase as long as a new identity file needs (12 characters or more)
PASSPHRASE = "correct horse battery"


def open_secret(document: dict, passphrase: str) -> bytes:
    """An identity file's secret, opened as docs/vault-format.md describes it (not with keys.identity)."""
    kdf = document["kdf"]
    key = Scrypt(salt=base64.b64decode(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
        passphrase.encode())
    header = {k: document[k] for k in ("format", "version", "name", "kdf")}
    return AESGCM(key).decrypt(base64.b64decode(document["nonce"]), base64.b64decode(document["ciphertext"]),
                               canonical(header))


CLASSIC_SHA256 = "919ff606b9d7ff05d2991115e728c952a7d5a2f850ad5ee5652fcfbf71c2031e"
CLASSIC_ROSTER_ENTRY = (
    b'{"hpke":"j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8=","name":"kat","roles":["auditor","viewer"],'
    b'"signing":"Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc="}'
)


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
    identity.save(a, PASSPHRASE, salt=b"s" * 16, nonce=b"n" * 12)
    identity.save(b, PASSPHRASE, salt=b"s" * 16, nonce=b"n" * 12)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("damage", ["passphrase", "ciphertext", "header", "truncated", "not-json"])
def test_every_failure_is_the_same_opaque_error(tmp_path, damage):
    path = tmp_path / "carol.key"
    PrivateIdentity.generate("carol", ["privacy-officer"]).save(path, PASSPHRASE)
    document = json.loads(path.read_text())
    passphrase = PASSPHRASE
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
    from gateway.cli import main  # imported here: the other tests need keys alone

    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "s3cret passphrase")
    out = tmp_path / "frank.key"
    assert main(["keys", "add-identity", str(keys), "frank", "--role", "investigator",
                 "--role", "auditor", "--out", str(out)]) == 0
    assert KeyDirectory.open(keys).identity("frank").roles == ("auditor", "investigator")
    assert PrivateIdentity.load(out, "s3cret passphrase").public.name == "frank"
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


@pytest.mark.production_kdf
def test_classic_identity_serialises_exactly_as_before(tmp_path):
    """A file and a roster entry from before post-quantum identities load, and re-save the same but for
    the stronger scrypt cost (and the longer passphrase a new file needs): same header otherwise, same
    secret inside."""
    assert hashlib.sha256(CLASSIC_FILE.encode()).hexdigest() == CLASSIC_SHA256
    old = tmp_path / "old.key"
    old.write_text(CLASSIC_FILE)
    loaded = PrivateIdentity.load(old, "pw")
    assert loaded.mlkem is None and not loaded.public.post_quantum
    assert canonical(loaded.public.to_json()) == CLASSIC_ROSTER_ENTRY
    assert sorted(loaded.public.to_json()) == ["hpke", "name", "roles", "signing"]
    assert PublicIdentity.from_json(json.loads(CLASSIC_ROSTER_ENTRY)) == loaded.public
    rebuilt = PrivateIdentity(
        loaded.public,
        X25519PrivateKey.from_private_bytes(bytes(range(32))),
        Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))),
    )
    new = tmp_path / "new.key"
    rebuilt.save(new, PASSPHRASE, salt=b"s" * 16, nonce=b"n" * 12)
    old_document, new_document = json.loads(CLASSIC_FILE), json.loads(new.read_text())
    assert new_document["kdf"] == {**old_document["kdf"], "n": 2**17}
    assert {k: v for k, v in new_document.items() if k not in ("kdf", "ciphertext")} == \
        {k: v for k, v in old_document.items() if k not in ("kdf", "ciphertext")}
    assert open_secret(new_document, PASSPHRASE) == open_secret(old_document, "pw")
    suite, private_key = loaded.hpke_opener()
    assert suite is SUITE_X25519 and private_key is loaded.hpke
    assert loaded.public.hpke_recipient()[0] is SUITE_X25519


def test_post_quantum_identity_through_the_passphrase_file(tmp_path):
    identity = PrivateIdentity.generate("pia", ["privacy-officer"], post_quantum=True)
    assert identity.public.post_quantum and len(identity.public.mlkem) == 1184
    path = tmp_path / "pia.key"
    identity.save(path, "correct horse")
    document = json.loads(path.read_text())
    assert sorted(document) == ["ciphertext", "format", "kdf", "name", "nonce", "version"]  # same header as classic
    loaded = PrivateIdentity.load(path, "correct horse")
    assert loaded.public == identity.public
    assert loaded.mlkem.private_bytes_raw() == identity.mlkem.private_bytes_raw()
    suite, public_key = identity.public.hpke_recipient()
    assert suite is SUITE_MLKEM768_X25519
    opener_suite, private_key = loaded.hpke_opener()
    assert opener_suite is SUITE_MLKEM768_X25519
    assert opener_suite.decrypt(suite.encrypt(b"data key", public_key, info=b"i"), private_key, info=b"i") == b"data key"
    with pytest.raises(IdentityError):
        PrivateIdentity.load(path, "wrong horse")


@pytest.mark.parametrize("mismatch", ["other-mlkem-public", "seed-without-public", "public-without-seed"])
def test_load_refuses_an_mlkem_seed_that_does_not_match_the_public_key(tmp_path, mismatch):
    real = PrivateIdentity.generate("quinn", ["viewer"], post_quantum=True)
    other = PrivateIdentity.generate("quinn", ["viewer"], post_quantum=True)
    forged = {
        "other-mlkem-public": PrivateIdentity(replace(real.public, mlkem=other.public.mlkem),
                                              real.hpke, real.signing, real.mlkem),
        "seed-without-public": PrivateIdentity(replace(real.public, mlkem=None), real.hpke, real.signing, real.mlkem),
        "public-without-seed": PrivateIdentity(real.public, real.hpke, real.signing),
    }[mismatch]
    path = tmp_path / "quinn.key"
    forged.save(path, PASSPHRASE)
    with pytest.raises(IdentityError) as info:
        PrivateIdentity.load(path, PASSPHRASE)
    assert str(info.value) == f"cannot open identity {path}: wrong passphrase or not a valid identity file"


def test_post_quantum_roster_entry_round_trip():
    public = PrivateIdentity.generate("pete", ["auditor", "investigator"], post_quantum=True).public
    entry = json.loads(json.dumps(public.to_json()))  # as the roster stores it
    assert sorted(entry) == ["hpke", "mlkem", "name", "roles", "signing"]
    assert len(base64.b64decode(entry["mlkem"])) == 1184 and len(base64.b64decode(entry["hpke"])) == 32
    assert PublicIdentity.from_json(entry) == public
    assert canonical(PublicIdentity.from_json(entry).to_json()) == canonical(entry)


def _mlkem_entry(public: PublicIdentity, raw: object) -> dict:
    entry = public.to_json()
    entry["mlkem"] = base64.b64encode(raw).decode() if isinstance(raw, bytes) else raw
    return entry


def test_tampered_mlkem_public_key_is_refused():
    public = PrivateIdentity.generate("pete", ["auditor"], post_quantum=True).public
    length = "identity 'pete': mlkem must be a 1184-byte ML-KEM-768 public key"
    for bad in (public.mlkem[:-1], public.mlkem + b"\0", b"", 12345, None):
        with pytest.raises(ValueError) as info:
            PublicIdentity.from_json(_mlkem_entry(public, bad))
        assert str(info.value) == length
    out_of_range = b"\xff\xff" + public.mlkem[2:]  # first coefficient 0xfff >= q = 3329
    with pytest.raises(ValueError) as info:
        PublicIdentity.from_json(_mlkem_entry(public, out_of_range))
    assert str(info.value) == "identity 'pete': mlkem is not a valid ML-KEM-768 public key"
    with pytest.raises(ValueError):
        PublicIdentity.from_json(_mlkem_entry(public, "not base64!"))


def test_substituted_mlkem_key_in_the_roster_fails_its_signature(tmp_path):
    """A well-formed but different ML-KEM key passes from_json; the roster signature catches it."""
    directory = KeyDirectory.init(tmp_path / "keys")
    pia = PrivateIdentity.generate("pia", ["privacy-officer"], post_quantum=True).public
    directory.add(pia)
    assert KeyDirectory.open(tmp_path / "keys").identity("pia") == pia
    roster = tmp_path / "keys" / "roster.json"
    document = json.loads(roster.read_text())
    substitute = MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    document["roster"]["identities"][0]["mlkem"] = base64.b64encode(substitute).decode()
    roster.write_text(json.dumps(document))
    with pytest.raises(DirectoryError, match="fails its signature check"):
        KeyDirectory.open(tmp_path / "keys")
