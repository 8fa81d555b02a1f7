"""An identity's life: its file's KDF and passphrase, its own passphrase variable, the reserved name,
leaving the roster (removed, or revoked for good) and its OpenBao login ending with it.

Real files, real keys, a real OpenBao (the session's dev server); only "OpenBao does not answer" is
an address nothing listens on.
"""

import base64
import io
import json
import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.cli import main
from gateway.cli.identities import PENDING
from gateway.cli.prompt import open_identities, variable
from gateway.openbao import CREDENTIALS, write_credentials
from keys import (
    CoSigner,
    CoSignerRefused,
    DirectoryError,
    IdentityError,
    KeyDirectory,
    PrivateIdentity,
    PublicIdentity,
    grant_access,
    revoke_access,
)
from keys.identity import MIN_PASSPHRASE, canonical, check_name, fingerprint

V1 = Path(__file__).resolve().parent / "data" / "vault-v1"
PASSPHRASE = "correct horse battery"
PREFIX = "pg-0000000000000000-face-0000000000000000-"  # a transit key prefix to grant (no key needed)
ENV = "PRIVACY_GATEWAY_PASSPHRASE"
OPAQUE = "wrong passphrase or not a valid identity file"


@pytest.fixture(autouse=True)
def no_passphrase_variables(monkeypatch):
    for name in [n for n in os.environ if n.startswith(ENV)]:
        monkeypatch.delenv(name)


def write_file(path: Path, identity: PrivateIdentity, passphrase: str, n: int, r: int = 8, p: int = 1) -> None:
    """An identity file with any scrypt parameters, written as docs/vault-format.md describes it."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = {"format": "privacy-gateway-identity", "version": 1, "name": identity.public.name,
              "kdf": {"name": "scrypt", "n": n, "r": r, "p": p, "salt": base64.b64encode(salt).decode()}}
    raw = Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    inner = {"public": identity.public.to_json(), "hpke": base64.b64encode(identity.hpke.private_bytes(*raw)).decode(),
             "signing": base64.b64encode(identity.signing.private_bytes(*raw)).decode()}
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())
    ciphertext = AESGCM(key).encrypt(nonce, canonical(inner), canonical(header))
    path.write_text(json.dumps({**header, "nonce": base64.b64encode(nonce).decode(),
                                "ciphertext": base64.b64encode(ciphertext).decode()}))


def kdf_of(path: Path) -> dict:
    return json.loads(path.read_text())["kdf"]


# --- 1. the KDF of identity files --------------------------------------------------------------------

@pytest.mark.production_kdf
def test_new_files_use_scrypt_2_17_and_older_2_15_files_still_open(tmp_path):
    identity = PrivateIdentity.generate("ines", ["investigator"])
    path = tmp_path / "ines.identity"
    identity.save(path, PASSPHRASE)
    assert {k: v for k, v in kdf_of(path).items() if k != "salt"} == {"name": "scrypt", "n": 2**17, "r": 8, "p": 1}
    assert PrivateIdentity.load(path, PASSPHRASE).public == identity.public
    # the vault-v1 fixture's file, written at n = 2**15 by an older version
    old = V1 / "ines.identity"
    assert kdf_of(old)["n"] == 2**15
    assert PrivateIdentity.load(old, "fixture passphrase v1").public.name == "ines"
    assert KeyDirectory.open(V1 / "keys").identity("ines") == PrivateIdentity.load(old, "fixture passphrase v1").public


@pytest.mark.parametrize(("n", "r", "p"), [(2**14, 8, 1), (2**15, 4, 1), (2**16, 2, 1)])
def test_files_weaker_than_the_first_ones_are_refused_though_the_passphrase_is_right(tmp_path, n, r, p):
    identity = PrivateIdentity.generate("weak", ["viewer"])
    path = tmp_path / "weak.identity"
    write_file(path, identity, PASSPHRASE, n, r, p)
    with pytest.raises(IdentityError, match=OPAQUE):
        PrivateIdentity.load(path, PASSPHRASE)
    write_file(path, identity, PASSPHRASE, 2**15)  # the same at the oldest accepted cost opens
    assert PrivateIdentity.load(path, PASSPHRASE).public == identity.public


@pytest.mark.parametrize("kdf", [{"n": 2**24}, {"n": 2**21}, {"n": 2**20, "r": 16}, {"p": 64}, {"r": 10**6},
                                 {"n": str(2**17)}, {"n": float(2**17)}, {"r": True}, {"n": -(2**17)}])
def test_absurd_scrypt_parameters_are_refused_before_any_derivation(tmp_path, kdf):
    path = tmp_path / "dos.identity"
    PrivateIdentity.generate("dos", ["viewer"]).save(path, PASSPHRASE)
    document = json.loads(path.read_text())
    document["kdf"].update(kdf)
    path.write_text(json.dumps(document))
    start = time.monotonic()
    with pytest.raises(IdentityError, match=OPAQUE):
        PrivateIdentity.load(path, PASSPHRASE)
    assert time.monotonic() - start < 0.1  # refused, not derived (2**24 would be 16 GiB and a minute)


# --- 2. the passphrase of a new identity file -------------------------------------------------------

def test_a_new_file_needs_a_passphrase_of_twelve_characters(tmp_path):
    assert MIN_PASSPHRASE == 12
    identity = PrivateIdentity.generate("ivan", ["investigator"])
    for short in ("", "pw", "elevenchars"):
        with pytest.raises(ValueError, match=f"at least 12 characters \\(this one has {len(short)}\\)"):
            identity.save(tmp_path / "ivan.identity", short)
        assert not (tmp_path / "ivan.identity").exists()
    identity.save(tmp_path / "ivan.identity", "twelve chars")
    assert PrivateIdentity.load(tmp_path / "ivan.identity", "twelve chars").public == identity.public


def test_opening_an_older_file_with_a_short_passphrase_is_not_restricted(tmp_path):
    identity = PrivateIdentity.generate("kat", ["auditor"])
    write_file(tmp_path / "kat.identity", identity, "pw", 2**15)  # as the code before wrote it
    assert PrivateIdentity.load(tmp_path / "kat.identity", "pw").public == identity.public


def test_cli_refuses_a_short_passphrase_and_writes_nothing(tmp_path, monkeypatch, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    monkeypatch.setenv(ENV, "too short")
    out = tmp_path / "ivan.identity"
    assert main(["keys", "add-identity", str(keys), "ivan", "--role", "investigator", "--out", str(out)]) == 2
    assert "a passphrase must be at least 12 characters (this one has 9)" in capsys.readouterr().err
    assert not out.exists() and KeyDirectory.open(keys).identities == [] and KeyDirectory.open(keys).serial == 0


# --- 3. a passphrase variable per identity ----------------------------------------------------------

def test_the_variable_of_a_name():
    assert variable("ivan") == "PRIVACY_GATEWAY_PASSPHRASE_IVAN"
    assert variable("olga.k-2@site_b") == "PRIVACY_GATEWAY_PASSPHRASE_OLGA_K_2_SITE_B"
    assert variable("Zoë") == "PRIVACY_GATEWAY_PASSPHRASE_ZO_"


def test_each_member_of_a_quorum_has_their_own_passphrase(tmp_path, monkeypatch, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    monkeypatch.setenv(ENV, "the shared passphrase")
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE_OLGA_K", "olga's own passphrase")
    for name, role in (("ivan", "investigator"), ("olga.k", "privacy-officer")):
        assert main(["keys", "add-identity", str(keys), name, "--role", role, "--out", str(tmp_path / name)]) == 0
    # created under each one's variable, else the shared one
    assert PrivateIdentity.load(tmp_path / "olga.k", "olga's own passphrase").public.name == "olga.k"
    assert PrivateIdentity.load(tmp_path / "ivan", "the shared passphrase").public.name == "ivan"
    files = [tmp_path / "ivan", tmp_path / "olga.k"]
    assert [h.public.name for h in open_identities(files)] == ["ivan", "olga.k"]
    # the shared variable alone no longer opens olga's file; ivan's own variable wins over the shared one
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE_IVAN", "the shared passphrase")
    monkeypatch.setenv(ENV, "nobody's passphrase")
    assert [h.public.name for h in open_identities(files)] == ["ivan", "olga.k"]
    monkeypatch.delenv("PRIVACY_GATEWAY_PASSPHRASE_OLGA_K")
    with pytest.raises(Exception, match=f"cannot open identity {tmp_path / 'olga.k'}: {OPAQUE}"):
        open_identities(files)
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE_OLGA_K", "")
    with pytest.raises(Exception, match="PRIVACY_GATEWAY_PASSPHRASE_OLGA_K is set but empty"):
        open_identities(files)


def test_without_any_variable_and_no_terminal_both_variables_are_named(tmp_path, monkeypatch):
    path = tmp_path / "ivan.identity"
    PrivateIdentity.generate("ivan", ["investigator"]).save(path, PASSPHRASE)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # not a terminal
    with pytest.raises(Exception, match="no passphrase for ivan: set PRIVACY_GATEWAY_PASSPHRASE_IVAN or "
                                        "PRIVACY_GATEWAY_PASSPHRASE, or run on a terminal"):
        open_identities([path])


def test_the_variables_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["keys", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "PRIVACY_GATEWAY_PASSPHRASE_<NAME> (NAME upper-cased" in text and "else from PRIVACY_GATEWAY_PASSPHRASE" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "PRIVACY_GATEWAY_PASSPHRASE_<NAME>" in readme


# --- 4. the reserved name ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gateway", "Gateway", "GATEWAY"])
def test_the_name_gateway_is_reserved(tmp_path, monkeypatch, capsys, name):
    with pytest.raises(ValueError, match="is reserved"):
        check_name(name)
    with pytest.raises(ValueError, match="is reserved"):
        PrivateIdentity.generate(name, ["viewer"])
    directory = KeyDirectory.init(tmp_path / "keys")
    someone = PrivateIdentity.generate("someone", ["viewer"]).public
    with pytest.raises(DirectoryError, match=f"identity name '{name}' is reserved"):
        directory.add(replace(someone, name=name))
    monkeypatch.setenv(ENV, PASSPHRASE)
    out = tmp_path / "gw.identity"
    assert main(["keys", "add-identity", str(tmp_path / "keys"), name, "--role", "viewer", "--out", str(out)]) == 2
    assert f"identity name '{name}' is reserved" in capsys.readouterr().err
    assert not out.exists() and KeyDirectory.open(tmp_path / "keys").serial == 0
    assert check_name("gateway-2") == "gateway-2"
    # a roster entry of that name from before the reservation still reads (its roster would open)
    assert PublicIdentity.from_json({**someone.to_json(), "name": name}).name == name


# --- 5. leaving the roster ----------------------------------------------------------------------------

def roster(keys: Path) -> dict:
    return json.loads((keys / "roster.json").read_text())["roster"]


def test_remove_drops_an_identity_and_revoke_bars_its_keys_for_good(tmp_path):
    directory = KeyDirectory.init(tmp_path / "keys")
    ivan, olga = (PrivateIdentity.generate(n, ["investigator"]).public for n in ("ivan", "olga"))
    directory.add(ivan)
    directory.add(olga)
    assert directory.remove("ivan") == ivan
    reopened = KeyDirectory.open(tmp_path / "keys")  # re-signed: its signature verifies
    assert reopened.serial == 3 and [i.name for i in reopened.identities] == ["olga"] and reopened.revoked == []
    assert "revoked" not in roster(tmp_path / "keys")  # a roster that revoked nobody is as before
    reopened.add(ivan)  # removed only: the same keys may come back
    with pytest.raises(DirectoryError, match="no identity named 'nobody'"):
        reopened.remove("nobody")

    record = reopened.revoke(ivan)
    assert (record.name, record.fingerprint) == ("ivan", fingerprint(ivan.signing))
    reopened = KeyDirectory.open(tmp_path / "keys")
    assert reopened.serial == 5 and [i.name for i in reopened.identities] == ["olga"]
    assert reopened.revoked == [record]
    entry = roster(tmp_path / "keys")["revoked"][0]
    assert sorted(entry) == ["fingerprint", "hpke", "name", "signing", "time"]
    assert entry["fingerprint"] == ivan.fingerprint and base64.b64decode(entry["signing"]) == ivan.signing
    # never again: not under its name, not under another, not with either of its keys
    for comeback in (ivan, replace(ivan, name="ivan2"),
                     replace(PrivateIdentity.generate("ivan3", ["viewer"]).public, signing=ivan.signing),
                     replace(PrivateIdentity.generate("ivan4", ["viewer"]).public, hpke=ivan.hpke)):
        with pytest.raises(DirectoryError, match=f"were revoked \\(as 'ivan', fingerprint {ivan.fingerprint}"):
            reopened.add(comeback)
    assert reopened.revoke(ivan) == record and KeyDirectory.open(tmp_path / "keys").serial == 5  # once
    # a fresh key for ivan is welcome; a key already in the roster under another name is not
    reopened.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    with pytest.raises(DirectoryError, match="are already 'olga'"):
        reopened.add(replace(olga, name="olga2"))
    # the revocation is signed: dropping it from the roster breaks the signature
    path = tmp_path / "keys" / "roster.json"
    document = json.loads(path.read_text())
    document["roster"]["revoked"] = []
    path.write_text(json.dumps(document))
    with pytest.raises(DirectoryError, match="fails its signature check"):
        KeyDirectory.open(tmp_path / "keys")


def test_cli_without_credentials_says_an_officer_ends_the_access(tmp_path, capsys):
    keys = tmp_path / "keys"
    directory = KeyDirectory.init(keys)
    ivan, olga = (PrivateIdentity.generate(n, ["investigator"]).public for n in ("ivan", "olga"))
    directory.add(ivan)
    directory.add(olga)
    capsys.readouterr()
    assert main(["keys", "remove-identity", str(keys), "ivan"]) == 0
    out = capsys.readouterr().out
    assert f"identity ivan (fingerprint {ivan.fingerprint}) removed from {keys}; roster serial 3" in out
    assert f"{keys} holds no co-signer credentials: the OpenBao access of ivan (auth/pg-id-{ivan.fingerprint})" in out
    assert "must be ended by an officer with the access policy (see docs/escrow.md)" in out
    assert main(["keys", "revoke", str(keys), "olga"]) == 0
    out = capsys.readouterr().out
    assert f"identity olga (fingerprint {olga.fingerprint}) revoked in {keys} (its keys can never be added again)" in out
    assert "must be ended by an officer" in out and not (keys / PENDING).exists()
    # again: the revoked one has nothing left to do; the removed one is simply unknown
    assert main(["keys", "revoke", str(keys), "olga"]) == 0
    assert "was revoked in" in capsys.readouterr().out
    assert main(["keys", "remove-identity", str(keys), "ivan"]) == 2
    assert f"{keys}: no identity named 'ivan'" in capsys.readouterr().err
    assert main(["keys", "list", str(keys)]) == 0
    listing = capsys.readouterr().out
    assert f"olga  {olga.fingerprint}  revoked" in listing and "ivan" not in listing
    assert KeyDirectory.open(keys).serial == 4
    # credentials that do not maintain access: the officer's job too; unreadable ones: exit 2, roster changed all the same
    directory = KeyDirectory.open(keys)
    directory.add(ivan)
    write_credentials(keys, "http://127.0.0.1:9", "token", manage_access=False)
    assert main(["keys", "remove-identity", str(keys), "ivan"]) == 0
    assert "do not maintain people's access: the OpenBao access of ivan" in capsys.readouterr().out
    KeyDirectory.open(keys).add(ivan)
    (keys / CREDENTIALS).write_text("{not json")
    assert main(["keys", "remove-identity", str(keys), "ivan"]) == 2
    assert "unreadable or malformed" in capsys.readouterr().err
    assert KeyDirectory.open(keys).identities == []


@pytest.mark.parametrize("action", ["revoke", "remove-identity"])
def test_leaving_ends_the_openbao_login_and_a_silent_openbao_is_retried(tmp_path, openbao, capsys, action):
    keys = tmp_path / "keys"
    directory = KeyDirectory.init(keys)
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(ivan.public)
    grant_access(openbao.cosigner(), ivan.public, [PREFIX])
    assert CoSigner(openbao.address).login(ivan)

    # OpenBao does not answer: the roster changes all the same, exit 2 says how to retry
    write_credentials(keys, "http://127.0.0.1:9", openbao.gateway_token, manage_access=True)
    capsys.readouterr()
    assert main(["keys", action, str(keys), "ivan"]) == 2
    captured = capsys.readouterr()
    assert KeyDirectory.open(keys).identities == [] and KeyDirectory.open(keys).serial == 2
    assert [r.name for r in KeyDirectory.open(keys).revoked] == (["ivan"] if action == "revoke" else [])
    assert "ivan (fingerprint" in captured.out
    assert (f"the OpenBao access of ivan (auth/pg-id-{ivan.public.fingerprint}) could not be ended: the co-signer "
            "(OpenBao) at http://127.0.0.1:9 does not answer") in captured.err
    assert f"run `privacy-gateway keys {action} {keys} ivan` again" in captured.err
    assert stat.S_IMODE((keys / PENDING).stat().st_mode) == 0o600
    assert CoSigner(openbao.address).login(ivan)  # still in, until the retry

    # once OpenBao answers, the same command ends the login (and changes the roster no further)
    write_credentials(keys, openbao.address, openbao.gateway_token, manage_access=True)
    assert main(["keys", action, str(keys), "ivan"]) == 0
    out = capsys.readouterr().out
    assert f"its OpenBao access (auth/pg-id-{ivan.public.fingerprint}) ended" in out
    assert KeyDirectory.open(keys).serial == 2 and not (keys / PENDING).exists()
    with pytest.raises(CoSignerRefused):
        CoSigner(openbao.address).login(ivan)
    # ending it again is harmless: OpenBao deletes a missing mount and policy without complaint
    revoke_access(openbao.cosigner(), ivan.public)
    if action == "revoke":
        assert main(["keys", action, str(keys), "ivan"]) == 0
        assert "nothing left to do" in capsys.readouterr().out


def test_revoke_with_openbao_up_at_once(tmp_path, openbao, capsys):
    keys = tmp_path / "keys"
    directory = KeyDirectory.init(keys)
    ivan, olga = PrivateIdentity.generate("ivan", ["investigator"]), PrivateIdentity.generate("olga", ["investigator"])
    for person in (ivan, olga):
        directory.add(person.public)
        grant_access(openbao.cosigner(), person.public, [PREFIX])
    write_credentials(keys, openbao.address, openbao.gateway_token, manage_access=True)
    assert main(["keys", "revoke", str(keys), "ivan"]) == 0
    assert f"its OpenBao access (auth/pg-id-{ivan.public.fingerprint}) ended" in capsys.readouterr().out
    with pytest.raises(CoSignerRefused):
        CoSigner(openbao.address).login(ivan)
    assert CoSigner(openbao.address).login(olga)  # the others keep theirs
    assert [i.name for i in KeyDirectory.open(keys).identities] == ["olga"]
    with pytest.raises(DirectoryError, match="were revoked"):
        KeyDirectory.open(keys).add(ivan.public)


# --- 6. one fingerprint format ------------------------------------------------------------------------

def test_every_command_prints_the_one_fingerprint_format(tmp_path, monkeypatch, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    directory = KeyDirectory.open(keys)
    assert directory.fingerprint == fingerprint(directory.gateway_public)
    assert f"gateway key fingerprint {directory.fingerprint}" in capsys.readouterr().out
    monkeypatch.setenv(ENV, PASSPHRASE)
    assert main(["keys", "add-identity", str(keys), "ivan", "--role", "investigator",
                 "--out", str(tmp_path / "ivan.identity")]) == 0
    ivan = KeyDirectory.open(keys).identity("ivan")
    assert ivan.fingerprint == fingerprint(ivan.signing) and len(ivan.fingerprint) == 16
    assert f"(investigator, fingerprint {ivan.fingerprint})" in capsys.readouterr().out
    assert main(["keys", "list", str(keys)]) == 0
    listing = capsys.readouterr().out
    assert f"roster serial 1, gateway key fingerprint {directory.fingerprint}" in listing
    assert f"ivan  {ivan.fingerprint}  investigator" in listing
