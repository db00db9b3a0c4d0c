"""Layered configuration: defaults, user YAML, env vars, overrides; validation errors name the key."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from persona import config as config_mod
from persona.config import Config, get_config, load_config, resolve_threads, set_config, user_config_path
from persona.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = REPO / "persona" / "configs" / "default.yaml"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty home, so the developer's own config never leaks in."""
    return {"HOME": str(tmp_path / "home")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(home: dict[str, str]) -> None:
    cfg = load_config(env=home)
    assert cfg.agd.compression == "zstd" and cfg.agd.zstd_level is None and cfg.agd.gzip_level is None
    assert cfg.agd.chunk_size == 100_000
    assert cfg.import_.threads == 0 and cfg.align.aligner == "minimap2"
    assert cfg.align.work_item_reads == 5000 and cfg.align.preset == "sr"
    assert cfg.align.references_url == "~/.local/share/persona/references"
    assert cfg.storage.default_url is None and cfg.import_.queue_depth == 2
    assert cfg.ptf.default_capacity == 2
    assert cfg.logging.level == "INFO"
    assert cfg.sources == ("defaults",)


def test_every_key_documented_in_defaults() -> None:
    """Each key in default.yaml has a comment line directly above it (or a trailing one)."""
    lines = DEFAULTS.read_text().splitlines()
    keys = 0
    for i, line in enumerate(lines):
        m = re.match(r"^  (\w+):", line)
        if m:
            keys += 1
            assert lines[i - 1].strip().startswith("#") or "#" in line, f"undocumented key {m.group(1)}"
    schema_keys = sum(len(v) for v in load_config(env={}).to_dict().values())
    assert keys == schema_keys


def test_frozen(home: dict[str, str]) -> None:
    cfg = load_config(env=home)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agd.zstd_level = 9  # type: ignore[misc]


def test_user_file_overrides_defaults(tmp_path: Path, home: dict[str, str]) -> None:
    user = write(tmp_path / "u.yaml", "agd:\n  compression: gzip\nexport:\n  bgzf_level: 1\n")
    cfg = load_config(user, env=home)
    assert cfg.agd.compression == "gzip" and cfg.export.bgzf_level == 1
    assert cfg.agd.zstd_level is None  # untouched keys keep their defaults
    assert cfg.sources == ("defaults", str(user))


def test_user_file_from_env_and_default_location(tmp_path: Path, home: dict[str, str]) -> None:
    default_user = write(user_config_path(home), "ptf:\n  default_capacity: 7\n")
    assert default_user == Path(home["HOME"]) / ".config" / "persona" / "persona.yaml"
    assert load_config(env=home).ptf.default_capacity == 7
    explicit = write(tmp_path / "e.yaml", "ptf:\n  default_capacity: 9\n")
    assert load_config(env={**home, "PERSONA_CONFIG": str(explicit)}).ptf.default_capacity == 9
    other = write(tmp_path / "o.yaml", "ptf:\n  default_capacity: 11\n")
    # --config wins over PERSONA_CONFIG
    assert load_config(other, env={**home, "PERSONA_CONFIG": str(explicit)}).ptf.default_capacity == 11
    xdg = {**home, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    write(tmp_path / "xdg" / "persona" / "persona.yaml", "ptf:\n  default_capacity: 13\n")
    assert load_config(env=xdg).ptf.default_capacity == 13


def test_missing_explicit_file(tmp_path: Path, home: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "nope.yaml", env=home)
    assert "nope.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={**home, "PERSONA_CONFIG": str(tmp_path / "nope2.yaml")})


def test_env_overrides_file(tmp_path: Path, home: dict[str, str]) -> None:
    user = write(tmp_path / "u.yaml", "agd:\n  zstd_level: 5\n")
    env = {
        **home,
        "PERSONA_AGD__ZSTD_LEVEL": "9",
        "PERSONA_IMPORT__THREADS": "4",
        "PERSONA_AGD__GZIP_LEVEL": "null",
        "PERSONA_LOGGING__LEVEL": "debug",
        "PERSONA_TEST_DATA": "/not/a/config/key",  # no "__": ignored
    }
    cfg = load_config(user, env=env)
    assert cfg.agd.zstd_level == 9
    assert cfg.import_.threads == 4
    assert cfg.agd.gzip_level is None
    assert cfg.logging.level == "DEBUG"  # choices are matched case-insensitively, stored canonically
    assert cfg.sources == ("defaults", str(user), "env")


def test_env_strings_keep_their_text(home: dict[str, str]) -> None:
    env = {**home, "PERSONA_ALIGN__PRESET": "0123", "PERSONA_STORAGE__DEFAULT_URL": "yes"}
    cfg = load_config(env=env)
    assert cfg.align.preset == "0123"  # not YAML's octal 83
    assert cfg.storage.default_url == "yes"  # not True
    assert load_config(env={**home, "PERSONA_STORAGE__DEFAULT_URL": ""}).storage.default_url is None


def test_overrides_win(home: dict[str, str]) -> None:
    env = {**home, "PERSONA_AGD__ZSTD_LEVEL": "9"}
    cfg = load_config(env=env, overrides={"agd.zstd_level": 12, "export": {"bgzf_level": 4}})
    assert cfg.agd.zstd_level == 12 and cfg.export.bgzf_level == 4
    assert cfg.sources[-1] == "override"
    again = cfg.with_overrides({"agd": {"compression": "none"}})
    assert again.agd.compression == "none" and again.agd.zstd_level == 12
    assert cfg.agd.compression == "zstd"


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        (
            {"PERSONA_AGD__ZSTD_LEVEL": "x"},
            None,
            "agd.zstd_level: expected int or null, got 'x' (source=env PERSONA_AGD__ZSTD_LEVEL)",
        ),
        ({}, {"agd.zstd_level": True}, "agd.zstd_level: expected int or null, got True (source=override)"),
        ({}, {"agd.zstd_level": 30}, "agd.zstd_level: must be between 1 and 22, got 30"),
        ({}, {"agd.chunk_size": 0}, "agd.chunk_size: must be >= 1, got 0"),
        ({}, {"agd.compression": "lz4"}, "agd.compression: expected one of zstd, gzip, none, got 'lz4'"),
        ({}, {"agd.zstd_levl": 3}, "agd.zstd_levl: unknown key (known: chunk_size, compression, gzip_level, zstd_"),
        ({"PERSONA_NOPE__X": "1"}, None, "nope: unknown section"),
        ({}, {"agd": 3}, "agd: expected a mapping, got 3"),
        ({}, {"export.bgzf_level": 70000}, "export.bgzf_level: must be between 0 and 9"),
        ({}, {"align.preset": " "}, "align.preset: must not be empty"),
        ({}, {"storage.default_url": 5}, "storage.default_url: expected str or null, got 5"),
        ({}, {"align.aligner": None}, "align.aligner: expected str, got None"),
        ({"PERSONA_AGD____X": "1"}, None, "PERSONA_AGD____X: malformed config variable"),
    ],
)
def test_errors_name_the_key(
    home: dict[str, str], env: dict[str, str], overrides: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**home, **env}, overrides=overrides)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)


def test_error_names_user_file(tmp_path: Path, home: dict[str, str]) -> None:
    user = write(tmp_path / "u.yaml", "export:\n  bgzf_level: high\n")
    with pytest.raises(ConfigError, match=r"export.bgzf_level: expected int, got 'high'") as info:
        load_config(user, env=home)
    assert str(user) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agd: [unclosed\n", "invalid YAML at line"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_bad_user_files(tmp_path: Path, home: dict[str, str], text: str, message: str) -> None:
    user = write(tmp_path / "u.yaml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(user, env=home)
    assert str(user) in str(info.value)


def test_empty_user_file(tmp_path: Path, home: dict[str, str]) -> None:
    assert load_config(write(tmp_path / "u.yaml", ""), env=home) == load_config(env=home)


def test_to_dict_and_yaml_round_trip(tmp_path: Path, home: dict[str, str]) -> None:
    cfg = load_config(env=home, overrides={"agd.compression": "gzip", "storage.default_url": "/srv/data"})
    d = cfg.to_dict()
    assert set(d) == {"agd", "storage", "import", "export", "align", "sort", "markdup", "ptf", "logging", "service"}
    assert d["import"] == {"threads": 0, "queue_depth": 2}
    text = cfg.to_yaml()
    assert text.startswith("# sources: defaults, override\n")
    assert yaml.safe_load(text) == d
    again = load_config(write(tmp_path / "shown.yaml", text), env=home)
    assert again == cfg
    assert Config.from_dict(d) == cfg


def test_from_dict_requires_every_key(home: dict[str, str]) -> None:
    d = load_config(env=home).to_dict()
    del d["ptf"]["default_capacity"]
    with pytest.raises(ConfigError, match="ptf.default_capacity: missing"):
        Config.from_dict(d)


def test_example_config_is_valid(home: dict[str, str]) -> None:
    cfg = load_config(REPO / "configs" / "persona.example.yaml", env=home)
    assert cfg.storage.default_url == "/data/persona" and cfg.agd.zstd_level == 5


def test_get_config_cached_and_settable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PERSONA_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(config_mod, "_current", None)
    monkeypatch.setenv("PERSONA_PTF__DEFAULT_CAPACITY", "3")
    first = get_config()
    assert first.ptf.default_capacity == 3 and get_config() is first
    custom = first.with_overrides({"ptf.default_capacity": 5})
    set_config(custom)
    assert get_config() is custom
    set_config(None)
    assert get_config() == first and get_config() is not first


def test_resolve_threads() -> None:
    assert resolve_threads(3) == 3
    assert resolve_threads(0) >= 1
