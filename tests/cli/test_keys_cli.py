"""`medsign keys ...` end to end through the Typer app."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsign_forensics.cli.main import app
from medsign_forensics.provenance import IssuerKey, ScryptParams, create_issuer_key, key_id_of, load_public_key_pem

PASSPHRASE = "cli test passphrase"
ENV = {"MEDSIGN_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"}
runner = CliRunner()


def _invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return runner.invoke(app, ["keys", *args], env=ENV if env is None else env, input=input)


def _json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A fast-to-decrypt issuer key and a registry made by `keys init`."""
    key = tmp_path / "issuer.key"
    create_issuer_key(key, PASSPHRASE, name="CLI Issuer", scrypt=ScryptParams(n=2**14))
    registry = tmp_path / "registry"
    assert _invoke("init", "--registry", str(registry)).exit_code == 0
    return key, registry


def _issue(key: Path, registry: Path, deployment: str = "site-a") -> dict:
    return _json(_invoke("issue", "--registry", str(registry), "--issuer-key", str(key), "--deployment", deployment,
                         "--model-name", "mini-cxr", "--model-version", "0.1.0", "--weights-sha256", "ab" * 32,
                         "--json"))


def test_init_creates_a_private_key_and_registers_it(tmp_path: Path) -> None:
    key, registry = tmp_path / "new.key", tmp_path / "reg"
    data = _json(_invoke("init", "--issuer-key", str(key), "--registry", str(registry), "--name", "Acme AI",
                         "--json"))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert data["issuers"] == 1 and len(data["key_id"]) == 64 and data["name"] == "Acme AI"
    assert PASSPHRASE not in key.read_text()
    again = _invoke("init", "--issuer-key", str(key), "--name", "Acme AI")
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr


def test_init_needs_something_to_create_and_a_name(tmp_path: Path) -> None:
    assert _invoke("init").exit_code == 2
    result = _invoke("init", "--issuer-key", str(tmp_path / "k.key"))
    assert result.exit_code == 2 and "--name is required" in result.stderr


def test_issue_list_show_revoke_check(setup: tuple[Path, Path]) -> None:
    key, registry = setup
    first, second = _issue(key, registry, "site-a"), _issue(key, registry, "site-b")
    assert first["provenance_id"].startswith("msp-") and len(first["key_hex"]) == 12
    listed = _json(_invoke("list", "--registry", str(registry), "--json"))
    assert [row["deployment"] for row in listed] == ["site-a", "site-b"]
    shown = _json(_invoke("show", first["provenance_id"], "--registry", str(registry), "--json"))
    assert shown["signature_valid"] is True and json.loads(shown["record"])["deployment"] == "site-a"
    revoked = _json(_invoke("revoke", second["provenance_id"], "--registry", str(registry), "--issuer-key",
                            str(key), "--reason", "weights leaked", "--json"))
    assert revoked["status"] == "revoked" and "weights leaked" in revoked["revocation"]
    only_revoked = _json(_invoke("list", "--registry", str(registry), "--status", "revoked", "--json"))
    assert [row["provenance_id"] for row in only_revoked] == [second["provenance_id"]]
    table = _invoke("list", "--registry", str(registry))
    assert table.exit_code == 0 and first["provenance_id"] in table.stdout and "revoked" in table.stdout
    report = _json(_invoke("check", "--registry", str(registry), "--json"))
    assert report["ok"] is True and report["rows_checked"] == 2


def test_check_exits_1_on_a_tampered_row(setup: tuple[Path, Path]) -> None:
    key, registry = setup
    issued = _issue(key, registry)
    with sqlite3.connect(registry / "registry.sqlite") as db:
        db.execute("UPDATE keys SET record = replace(record, 'site-a', 'site-z')")
    result = _invoke("check", "--registry", str(registry), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["failed_rows"][0]["provenance_id"] == issued["provenance_id"]
    human = _invoke("check", "--registry", str(registry))
    assert human.exit_code == 1 and "TAMPERED" in human.stdout
    shown = _json(_invoke("show", issued["provenance_id"], "--registry", str(registry), "--json"))
    assert shown["signature_valid"] is False


def test_check_with_pinned_trust(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    key, registry = setup
    _issue(key, registry)
    own = tmp_path / "own.pem"
    assert _invoke("export-public", "--issuer-key", str(key), "--out", str(own)).exit_code == 0
    assert _invoke("check", "--registry", str(registry), "--trust", str(own)).exit_code == 0
    stranger = tmp_path / "stranger.pem"
    stranger.write_text(IssuerKey.generate("Stranger").public_key_pem())
    assert _invoke("check", "--registry", str(registry), "--trust", str(stranger)).exit_code == 1


def test_export_public_prints_pem_matching_the_key(setup: tuple[Path, Path]) -> None:
    key, _ = setup
    result = _invoke("export-public", "--issuer-key", str(key))
    assert result.exit_code == 0 and "BEGIN PUBLIC KEY" in result.stdout and "PRIVATE" not in result.stdout
    data = _json(_invoke("export-public", "--issuer-key", str(key), "--json"))
    assert key_id_of(load_public_key_pem(data["public_key_pem"])) == data["key_id"]


def test_passphrase_prompt_when_the_variable_is_unset(setup: tuple[Path, Path]) -> None:
    key, _ = setup
    result = _invoke("export-public", "--issuer-key", str(key), env={"MEDSIGN_PASSPHRASE": ""},
                     input=PASSPHRASE + "\n")
    assert result.exit_code == 0 and "BEGIN PUBLIC KEY" in result.stdout


def test_wrong_passphrase_is_one_line_and_exit_5(setup: tuple[Path, Path]) -> None:
    key, registry = setup
    result = _invoke("revoke", "msp-aaaaaaaaaaaaaaaa", "--registry", str(registry), "--issuer-key", str(key),
                     "--reason", "x", env={"MEDSIGN_PASSPHRASE": "wrong passphrase!"})
    assert result.exit_code == 5
    assert "wrong passphrase" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_registry_and_unknown_id(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    result = _invoke("list", "--registry", str(tmp_path / "absent"))
    assert result.exit_code == 5 and "no registry here" in result.stderr
    _, registry = setup
    result = _invoke("show", "msp-aaaaaaaaaaaaaaaa", "--registry", str(registry))
    assert result.exit_code == 5 and "no deployment with provenance ID" in result.stderr


def test_weights_file_is_hashed_and_options_are_exclusive(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    key, registry = setup
    weights = tmp_path / "decoder.safetensors"
    weights.write_bytes(b"weights" * 1000)
    data = _json(_invoke("issue", "--registry", str(registry), "--issuer-key", str(key), "--deployment", "w",
                         "--model-name", "mini-cxr", "--model-version", "1", "--weights", str(weights), "--json"))
    assert json.loads(data["record"])["model"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    both = _invoke("issue", "--registry", str(registry), "--issuer-key", str(key), "--deployment", "w",
                   "--model-name", "m", "--model-version", "1", "--weights", str(weights), "--weights-sha256",
                   "ab" * 32)
    assert both.exit_code == 2 and "exactly one of" in both.stderr


def _unrevoke(registry: Path, provenance_id: str) -> None:
    with sqlite3.connect(registry / "registry.sqlite") as db:
        db.execute("UPDATE keys SET status='active', revocation=NULL, revocation_signature=NULL "
                   "WHERE provenance_id = ?", (provenance_id,))


def test_check_reports_unrevocation_on_one_line_even_with_trust(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    key, registry = setup
    issued = _issue(key, registry)
    _json(_invoke("revoke", issued["provenance_id"], "--registry", str(registry), "--issuer-key", str(key),
                  "--reason", "leak", "--json"))
    own = tmp_path / "own.pem"
    assert _invoke("export-public", "--issuer-key", str(key), "--out", str(own)).exit_code == 0
    assert _invoke("check", "--registry", str(registry), "--trust", str(own)).exit_code == 0
    _unrevoke(registry, issued["provenance_id"])
    result = _invoke("check", "--registry", str(registry), "--trust", str(own))
    assert result.exit_code == 1
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("TAMPERED:")]
    assert "it was un-revoked" in line and issued["provenance_id"] in line
    report = json.loads(_invoke("check", "--registry", str(registry), "--json").stdout)
    assert report["ok"] is False and "un-revoked" in report["reason"]


def test_checkpoint_file_pins_history(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    key, registry = setup
    _issue(key, registry, "site-a")
    pin = tmp_path / "pin.json"
    exported = _json(_invoke("checkpoint", "--registry", str(registry), "--out", str(pin), "--json"))
    assert exported["log_size"] == 1 and exported["checkpoint"]["head_hash"] == exported["head_hash"]
    assert "PRIVATE" not in pin.read_text()
    old = tmp_path / "old.sqlite"
    old.write_bytes((registry / "registry.sqlite").read_bytes())
    _issue(key, registry, "site-b")
    newer = tmp_path / "newer.json"
    _json(_invoke("checkpoint", "--registry", str(registry), "--out", str(newer), "--json"))
    assert _invoke("check", "--registry", str(registry), "--checkpoint-file", str(pin)).exit_code == 0
    assert _invoke("check", "--registry", str(registry), "--checkpoint", exported["head_hash"]).exit_code == 0
    (registry / "registry.sqlite").write_bytes(old.read_bytes())  # roll back to the older copy
    result = _invoke("check", "--registry", str(registry), "--checkpoint-file", str(newer))
    assert result.exit_code == 1 and "TAMPERED: rolled back: the log has 1 entries, fewer than the 2" in result.stdout
    both = _invoke("check", "--registry", str(registry), "--checkpoint", "ab" * 32, "--checkpoint-file", str(pin))
    assert both.exit_code == 2


def test_migrate_and_sign_a_checkpoint(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    key, registry = setup
    _issue(key, registry)
    with sqlite3.connect(registry / "registry.sqlite") as db:  # make it a schema-1 file again
        for table in ("log", "checkpoints"):
            for action in ("update", "delete"):
                db.execute(f"DROP TRIGGER {table}_append_only_{action}")
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 1")
    v1 = _invoke("check", "--registry", str(registry))
    assert v1.exit_code == 1 and "UNANCHORED: schema version 1" in v1.stdout
    assert _invoke("check", "--registry", str(registry), "--allow-unanchored").exit_code == 0
    migrated = _json(_invoke("migrate", "--registry", str(registry), "--json"))
    assert migrated["from_version"] == 1 and migrated["log_size"] == 1 and migrated["checkpoint_signed"] is False
    unanchored = _invoke("check", "--registry", str(registry))
    assert unanchored.exit_code == 1 and "UNANCHORED: no signed checkpoint" in unanchored.stdout
    no_file = _invoke("checkpoint", "--registry", str(registry), "--out", str(tmp_path / "x.json"))
    assert no_file.exit_code == 2 and "no signed checkpoint" in no_file.stderr
    pinned = _invoke("check", "--registry", str(registry), "--checkpoint", f"1:{migrated['head_hash']}")
    assert pinned.exit_code == 0
    signed = _json(_invoke("checkpoint", "--registry", str(registry), "--issuer-key", str(key), "--json"))
    assert signed["signed_now"] is True
    assert _invoke("check", "--registry", str(registry)).exit_code == 0


def test_list_is_readable_in_an_80_column_terminal():
    from medsign_forensics.verify import DEFAULT_REGISTRY_DIR

    result = runner.invoke(app, ["keys", "list", "--registry", str(DEFAULT_REGISTRY_DIR)],
                           env={**ENV, "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output  # nothing that matters is cut
    assert "msp-ti4ip3qo2neohdv5" in result.output and "b227cf7f82a2" in result.output and "revoked" in result.output


def test_issue_with_the_latent_layer_stores_a_secret_the_output_never_shows(setup: tuple[Path, Path]) -> None:
    from medsign_forensics.diffusion import load_model
    from medsign_forensics.provenance.layers import latent_layers
    from medsign_forensics.provenance.registry import Registry

    key, registry = setup
    result = _invoke("issue", "--registry", str(registry), "--issuer-key", str(key), "--deployment", "site-l",
                     "--model-name", "mini-cxr", "--model-version", "0.1.0", "--weights-sha256", "ab" * 32,
                     "--layers", "decoder,latent", "--json")
    data = _json(result)
    assert data["layers"] == ["decoder", "latent"]
    with Registry.open(registry) as opened:
        layer = latent_layers(opened)[data["provenance_id"]]
    assert layer.base_weights_sha256 == load_model().weights_sha256 and len(layer.secret) == 32
    assert layer.config["block"] == 4  # new layers leave each 4 x 4 block's mean free
    assert layer.secret.hex() not in result.output
    plain = _issue(key, registry, "site-p")
    with Registry.open(registry) as opened:
        assert plain["provenance_id"] not in latent_layers(opened)
    unknown = _invoke("issue", "--registry", str(registry), "--issuer-key", str(key), "--deployment", "x",
                      "--model-name", "m", "--model-version", "1", "--weights-sha256", "ab" * 32, "--layers", "pixels")
    assert unknown.exit_code == 2 and "unknown watermark layer" in unknown.stderr


def test_add_binding_gives_an_older_key_its_secret_once(setup: tuple[Path, Path]) -> None:
    import sqlite3

    from medsign_forensics.provenance.layers import bindings
    from medsign_forensics.provenance.registry import Registry

    key, registry = setup
    issued = _issue(key, registry, "site-b")
    with Registry.open(registry) as opened:
        assert issued["provenance_id"] in bindings(opened)  # `keys issue` binds every new key
    with sqlite3.connect(registry / "registry.sqlite") as db:
        db.execute("DROP TABLE spectral_bindings")  # a key issued before content binding
    added = _invoke("add-binding", issued["provenance_id"], "--registry", str(registry), "--json")
    assert _json(added) == {"provenance_id": issued["provenance_id"], "binding": True, "deployment": None}
    with Registry.open(registry) as opened:
        secret = bindings(opened)[issued["provenance_id"]]
    assert secret.hex() not in added.output
    again = _invoke("add-binding", issued["provenance_id"], "--registry", str(registry))
    assert again.exit_code != 0 and "already has a binding secret" in again.output
