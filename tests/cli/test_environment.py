"""Reading the environment a systemd unit gives its service, and KEY=value files (pure parsing)."""

from __future__ import annotations

from pathlib import Path

from headrace.cli.environment import Environment, read_env_file, read_unit


def test_unit_settings_as_systemd_applies_them(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# comment\n; also a comment\nTOKEN='a b'\nQUOTED=\"say \\\"hi\\\"\"\nLONG=one \\\n  two\nA=from-file\n")
    unit = tmp_path / "svc.service"
    unit.write_text(f"""\
[Unit]
Environment=NOT_SERVICE=1

[Service]
Environment=A=1 "B=two words"
Environment=C=3
StateDirectory=svc svc-extra:alias
RuntimeDirectory=svc
ConfigurationDirectory=
EnvironmentFile=-{tmp_path / 'absent.env'}
EnvironmentFile={secrets}
""")
    (tmp_path / "svc.service.d").mkdir()
    (tmp_path / "svc.service.d" / "10-more.conf").write_text("[Service]\nEnvironment=C=override\nCacheDirectory=svc\n")
    env = Environment()
    read_unit(unit, env)
    assert env.errors == [] and env.warnings == []  # a missing optional file is skipped, as systemd does
    assert env.variables == {
        "A": "from-file",  # EnvironmentFile= overrides Environment=
        "B": "two words",
        "C": "override",  # drop-ins come after the unit
        "STATE_DIRECTORY": "/var/lib/svc:/var/lib/svc-extra",
        "RUNTIME_DIRECTORY": "/run/svc",
        "CACHE_DIRECTORY": "/var/cache/svc",
        "TOKEN": "a b",
        "QUOTED": 'say "hi"',
        "LONG": "one two",
    }


def test_an_empty_environment_line_resets_and_errors_have_positions(tmp_path: Path) -> None:
    unit = tmp_path / "svc.service"
    unit.write_text("[Service]\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\nEnvironmentFile=/nonexistent/required.env\n")
    bad = tmp_path / "bad.env"
    bad.write_text("GOOD=1\nnot an assignment\n")
    env = Environment()
    read_unit(unit, env)
    read_env_file(bad, env)
    assert env.variables == {"B": "2", "GOOD": "1"}
    assert [str(e) for e in env.errors] == [
        f"{unit}:5:1: cannot read environment file /nonexistent/required.env: [Errno 2] No such file or directory: '/nonexistent/required.env'",
        f"{bad}:2:1: expected KEY=value, got 'not an assignment'",
    ]
