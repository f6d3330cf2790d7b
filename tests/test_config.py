# Settings load from defaults, the file and the environment, and a bad
# value is reported with its name.

from __future__ import annotations

import pytest

from vault import ConfigError
from vault.config import load


def write(home, text):
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def test_defaults_apply_where_the_file_is_silent(tmp_path):
    settings = load(write(tmp_path / "h", '[archive]\ndomains = ["example.com"]\n'), {})
    assert settings.archive.domains == ("example.com",)
    assert settings.receiver.listen == "127.0.0.1:2525"
    assert settings.portal.listen == "127.0.0.1:8080"
    assert settings.receiver.trusted_networks == ("127.0.0.0/8", "::1/128")


def test_environment_overrides_the_file(tmp_path):
    home = write(tmp_path / "h", '[receiver]\nlisten = "127.0.0.1:2600"\n')
    settings = load(home, {"STRONGROOM_RECEIVER_LISTEN": "127.0.0.1:2700",
                           "STRONGROOM_ARCHIVE_DOMAINS": "a.example, b.example"})
    assert settings.receiver.listen == "127.0.0.1:2700"
    assert settings.archive.domains == ("a.example", "b.example")


@pytest.mark.parametrize("text, named", [
    ('[receiver]\nlisten = "nowhere"\n', "receiver.listen"),
    ('[receiver]\ntrusted_networks = ["10.0.0.300/8"]\n', "receiver.trusted_networks"),
    ('[receiver]\nmax_message_size = "big"\n', "receiver.max_message_size"),
    ('[receiver]\nlisen = "x"\n', "lisen"),
    ('[archive]\ndomains = "example.com"\n', "archive.domains"),
    ('[store]\nkind = "floppy"\n', "store.kind"),
    ("[archive\n", "config.toml"),
])
def test_bad_values_are_named(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(write(tmp_path / "h", text), {})


def test_example_config_names_every_setting_with_its_default():
    import dataclasses
    import tomllib

    from tests.conftest import REPOSITORY
    from vault.config import Settings

    document = tomllib.loads((REPOSITORY / "config.example.toml").read_text())
    defaults = Settings(home=REPOSITORY)
    for field in dataclasses.fields(Settings):
        if field.name == "home":
            continue
        section = getattr(defaults, field.name)
        documented = document[field.name]
        for setting in dataclasses.fields(section):
            value = getattr(section, setting.name)
            expected = list(value) if isinstance(value, tuple) else value
            assert documented[setting.name] == expected, f"{field.name}.{setting.name}"
        assert set(documented) == {s.name for s in dataclasses.fields(section)}
