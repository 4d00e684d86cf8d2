"""Node identity files and configuration."""

import os
import stat

import pytest
from click.testing import CliRunner

from p2pnet import config, identity
from p2pnet.files import SMALL_FILE_BYTES


def test_key_created_0600_and_stable(tmp_path):
    a = identity.load_or_create(tmp_path / "d")
    path = tmp_path / "d" / identity.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b = identity.load_or_create(tmp_path / "d")
    assert a.peer_id == b.peer_id and a.peer_id_str.startswith("12D3KooW")


def test_key_readable_by_others_is_refused(tmp_path):
    identity.load_or_create(tmp_path)
    path = tmp_path / identity.KEY_FILE
    os.chmod(path, 0o644)
    with pytest.raises(identity.IdentityError, match="chmod 600"):
        identity.load_or_create(tmp_path)


def test_malformed_key_file(tmp_path):
    path = tmp_path / identity.KEY_FILE
    path.write_text("not hex")
    os.chmod(path, 0o600)
    with pytest.raises(identity.IdentityError, match="not a hex"):
        identity.load(path)


def test_libp2p_and_signing_keys_agree(tmp_path):
    from libp2p.peer.id import ID

    ident = identity.load_or_create(tmp_path)
    kp = ident.libp2p_key_pair()
    assert ID.from_pubkey(kp.public_key).to_base58() == ident.peer_id_str


def test_node_id_cli(tmp_path):
    from p2pnet_cli.main import _register, cli

    _register()
    out = CliRunner().invoke(cli, ["node", "id", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0
    assert out.output.strip() == identity.load_or_create(tmp_path).peer_id_str


def test_config_file_then_flags(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('api_port = 9999\nbootstrap = ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGMsMXhTYHohBpJxvittdDRZYGh9F2tBaESAADLARfHcR"]\n')
    cfg = config.build(f, data_dir=tmp_path, api_port=None)
    assert cfg.api_port == 9999 and len(cfg.bootstrap) == 1
    assert config.build(f, data_dir=tmp_path, api_port=1234).api_port == 1234


@pytest.mark.parametrize("text, key", [
    ("nonsense_key = 1\n", "nonsense_key"),
    ("api_port = 'x'\n", "api_port"),
    ("listen = ['not-a-multiaddr']\n", "listen"),
    ("bootstrap = ['/ip4/127.0.0.1/tcp/1']\n", "bootstrap"),
    ("validator = true\n", "validator"),
    ("api_port = [\n", "node.toml"),
    ("judges = 17\n", "judges"),
    ("judges = -1\n", "judges"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    f = tmp_path / "node.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=key):
        config.build(f, data_dir=tmp_path)


def test_api_beyond_loopback_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("P2PNET_API_KEY", raising=False)
    with pytest.raises(config.ConfigError, match="api_key"):
        config.build(None, data_dir=tmp_path, api_host="0.0.0.0")
    assert config.build(None, data_dir=tmp_path, api_host="0.0.0.0", api_key="k").api_key == "k"


def test_config_file_not_text_or_too_large_names_the_file(tmp_path):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(config.ConfigError, match="bin.toml is not UTF-8 text"):
        config.build(binary, data_dir=tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (SMALL_FILE_BYTES + 1))  # a comment: valid TOML but for its size
    with pytest.raises(config.ConfigError, match="big.toml is larger than 1 MiB"):
        config.build(big, data_dir=tmp_path)
    big.write_bytes(b"#" * SMALL_FILE_BYTES)
    assert config.build(big, data_dir=tmp_path).api_port == 8700


def _random_65():
    import random

    data = random.Random(22).randbytes(65)  # the size of a key file, not its text
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    return data


GOOD_SEED_HEX = "11" * 32


@pytest.mark.parametrize("content", [
    _random_65(),
    b"",
    b"\n",
    GOOD_SEED_HEX[:40].encode() + b"\n",  # truncated
    GOOD_SEED_HEX.encode() + b"ab\n",  # too long
    b'{"seed": "' + GOOD_SEED_HEX.encode() + b'"}\n',  # JSON, not hex
    b"\xff\xfe" + GOOD_SEED_HEX.encode("utf-16-le"),  # not UTF-8
    GOOD_SEED_HEX[:-1].encode() + b"g\n",
    " ".join(GOOD_SEED_HEX[i:i + 2] for i in range(0, 64, 2)).encode(),  # fromhex would take it: still not ours
    b"0" * 5000,
], ids=["random65", "empty", "newline", "truncated", "long", "json", "utf16", "nonhex", "spaced", "huge"])
def test_every_bad_key_file_gets_the_same_clear_error(tmp_path, content):
    path = tmp_path / identity.KEY_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(identity.IdentityError) as info:
        identity.load_or_create(tmp_path)
    assert str(info.value) == (
        f"key file {path} is not a hex Ed25519 seed (64 hex digits); it is damaged or not a p2pnet key: "
        f"restore it from a backup, or move it aside to start with a new identity")


def test_a_good_key_file_with_or_without_newline_loads(tmp_path):
    path = tmp_path / identity.KEY_FILE
    for text in (GOOD_SEED_HEX, GOOD_SEED_HEX + "\n", GOOD_SEED_HEX.upper() + "\r\n"):
        path.write_text(text)
        os.chmod(path, 0o600)
        assert identity.load(path).seed == bytes.fromhex(GOOD_SEED_HEX)


def test_cost_weight_is_a_node_setting_checked_for_range(tmp_path):
    from p2pnet.config import ConfigError

    assert config.build(None).cost_weight == 0.01
    assert config.build(None, cost_weight=0.02).cost_weight == 0.02
    with pytest.raises(ConfigError, match="cost_weight"):
        config.build(None, cost_weight=1.5)
