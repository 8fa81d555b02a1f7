"""The package's seams: everything the gateway needs is in ``keys.__all__``, and nothing crosses the line."""

import ast
import subprocess
import sys
from pathlib import Path

import keys

PACKAGE = Path(keys.__file__).parent

GATEWAY_NEEDS = {
    "EscrowError", "IntegrityError", "AuditError", "AuditLog", "DirectoryError", "IdentityError", "VaultError",
    "UnmaskError", "UnwrapError", "KeyDirectory", "PrivateIdentity", "PublicIdentity", "Grant", "Sealed", "Sealer",
    "VaultRef", "VaultStore", "ObjectStore", "LocalObjects", "Selection", "Unmask", "grants_of", "check_grants",
    "check_camera", "GATEWAY_ACTOR", "verify_vault", "verify_audit", "shred", "recording_tracks", "VaultReport",
    "TrackSummary", "atomic_path", "write_durably",
}


def test_everything_the_gateway_needs_is_exported():
    assert GATEWAY_NEEDS <= set(keys.__all__)
    assert all(hasattr(keys, name) for name in keys.__all__)
    assert len(set(keys.__all__)) == len(keys.__all__)


def test_keys_imports_nothing_from_gateway_or_redaction():
    code = "import keys, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('gateway', 'redaction')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] not in ("gateway", "redaction"), (path.name, node.module)


def test_no_private_name_is_imported_across_modules():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("keys")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)
