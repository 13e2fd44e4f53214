"""CacheConfig.from_env: every variable, every startup error."""

from __future__ import annotations

import warnings
from pathlib import Path

import attrs
import pytest

from librecache import CacheConfig, CacheKeys, ConfigurationError
from librecache.variables import VARIABLES

SECRET = "hunter2-Secret!"


def build(**variables: str) -> CacheConfig:
    return CacheConfig.from_env(variables)


def error_of(**variables: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        build(**variables)
    assert isinstance(caught.value, ValueError)
    assert SECRET not in str(caught.value)
    return caught.value


# -- namespaces ---------------------------------------------------------------


def test_cache_keys_are_the_22_namespaces_of_the_docs() -> None:
    assert len(CacheKeys) == 22
    for member in CacheKeys:
        assert member.value == member.name
        assert str(member) == member.name
    assert CacheKeys("ROLES") is CacheKeys.ROLES


# -- defaults -----------------------------------------------------------------


def test_defaults_mean_memory_everywhere() -> None:
    config = build()
    assert config.use_redis is False
    assert config.use_redis_streams is False
    assert config.redis_uris == ()
    assert config.key_prefix == ""
    assert config.max_listeners == 40
    assert config.ping_interval == 0
    assert config.retry_max_delay == 3.0
    assert config.retry_max_attempts == 10
    assert config.connect_timeout == 10.0
    assert config.ban_duration == 7200.0
    assert not any(config.uses_redis(ns) for ns in CacheKeys)


def test_reference_ttls() -> None:
    config = build(BAN_DURATION="1000 * 60 * 60")
    expected = {
        "ABORT_KEYS": 600, "TOKEN_CONFIG": 1800, "GEN_TITLE": 120, "S3_EXPIRY_INTERVAL": 1800,
        "AUDIO_RUNS": 600, "MESSAGES": 60, "FLOWS": 180, "OPENID_EXCHANGED_TOKENS": 600,
        "BANS": 3600,
    }
    for member in CacheKeys:
        assert config.ttl(member) == expected.get(member.value), member


def test_ttl_overrides_from_the_environment_and_per_registry() -> None:
    config = build(LIBRECACHE_NAMESPACE_TTLS="ROLES=300, MESSAGES=none, FLOWS = 2 * 60")
    assert (config.ttl("ROLES"), config.ttl("MESSAGES"), config.ttl("FLOWS")) == (300, None, 120)
    changed = config.with_ttls({CacheKeys.GEN_TITLE: 5, "ROLES": None})
    assert (changed.ttl("GEN_TITLE"), changed.ttl("ROLES"), changed.ttl("FLOWS")) == (5, None, 120)
    assert config.ttl("GEN_TITLE") == 120  # the original is unchanged
    assert error_of(LIBRECACHE_NAMESPACE_TTLS="NOPE=3").variable == "LIBRECACHE_NAMESPACE_TTLS"
    assert "NAMESPACE=seconds" in str(error_of(LIBRECACHE_NAMESPACE_TTLS="ROLES"))


def test_server_side_expiry() -> None:
    config = build()
    assert config.redis_expiry("MESSAGES") == 66  # 60 s and a tenth of grace
    assert config.redis_expiry("BANS") == 7260  # grace capped at 60 s
    assert config.storage_expiry("ROLES") is None
    assert config.redis_expiry("ROLES") == 604800  # retention of TTL-less namespaces
    assert build(LIBRECACHE_REDIS_RETENTION="0").redis_expiry("ROLES") is None


# -- redis switch, uris, cluster ------------------------------------------------


def test_use_redis_needs_a_uri() -> None:
    error = error_of(USE_REDIS="true")
    assert str(error) == "USE_REDIS is enabled but REDIS_URI is not set."
    assert error.variable == "REDIS_URI"


def test_streams_follow_use_redis_unless_set() -> None:
    uri = "redis://127.0.0.1:6379"
    assert build(USE_REDIS="true", REDIS_URI=uri).use_redis_streams is True
    assert build(USE_REDIS="true", REDIS_URI=uri, USE_REDIS_STREAMS="false").use_redis_streams is False
    assert build(REDIS_URI=uri, USE_REDIS_STREAMS="on").use_redis_streams is True
    assert "USE_REDIS_STREAMS" in str(error_of(USE_REDIS_STREAMS="true"))


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "On"])
def test_true_booleans(value: str) -> None:
    assert build(USE_REDIS=value, REDIS_URI="redis://h").use_redis is True


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "OFF"])
def test_false_booleans(value: str) -> None:
    assert build(USE_REDIS=value).use_redis is False


@pytest.mark.parametrize("value", ["maybe", "tru", "2", "y"])
def test_other_booleans_are_errors(value: str) -> None:
    error = error_of(USE_REDIS_CLUSTER=value)
    assert error.variable == "USE_REDIS_CLUSTER"
    assert repr(value) in str(error)
    assert "true/false" in str(error)


def test_blank_values_count_as_unset() -> None:
    config = build(USE_REDIS="", REDIS_URI="  ", BAN_DURATION="")
    assert config.use_redis is False and config.redis_uris == () and config.ban_duration == 7200


def test_uri_forms() -> None:
    config = build(USE_REDIS="1", REDIS_URI="rediss://us%40er:p%3Ass@cache.example:6380/2")
    (uri,) = config.redis_uris
    assert (uri.scheme, uri.host, uri.port, uri.db) == ("rediss", "cache.example", 6380, 2)
    assert (config.username, config.password, config.tls, config.cluster) == ("us@er", "p:ss", True, False)
    assert build(REDIS_URI="redis://[::1]").redis_uris[0].host == "::1"
    assert build(REDIS_URI="redis://h").redis_uris[0].port == 6379


def test_several_uris_mean_a_cluster() -> None:
    config = build(REDIS_URI="redis://127.0.0.1:7001, redis://127.0.0.1:7002,redis://127.0.0.1:7003")
    assert config.cluster and [uri.port for uri in config.redis_uris] == [7001, 7002, 7003]
    assert not build(REDIS_URI="redis://127.0.0.1:7001").cluster
    assert build(REDIS_URI="redis://127.0.0.1:7001", USE_REDIS_CLUSTER="true").cluster


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("http://h:1", "must start with redis:// or rediss://"),
        ("redis://h:notaport", "the port 'notaport' is not a number from 1 to 65535"),
        ("redis://:6379", "has no host"),
        ("redis://h/x", "database number"),
        ("redis://h?ssl=true", "query parameters are not supported"),
        ("redis://a,,redis://b", "empty entry"),
        ("redis://a,rediss://b", "All REDIS_URI entries must use the same protocol"),
        ("redis://a:1,redis://a:1", "same address twice"),
        ("redis://u:x@a,redis://u:y@b", "same credentials"),
    ],
)
def test_bad_uris(uri: str, fragment: str) -> None:
    error = error_of(REDIS_URI=uri)
    assert fragment in str(error)
    assert error.variable == "REDIS_URI"


def test_cluster_has_only_database_zero() -> None:
    assert "database 0" in str(error_of(REDIS_URI="redis://a/1,redis://b/1"))


def test_uri_password_is_never_shown() -> None:
    error = error_of(REDIS_URI=f"http://user:{SECRET}@host:1")
    assert "'http://***@host:1'" in str(error)
    config = build(USE_REDIS="true", REDIS_URI=f"redis://user:{SECRET}@host:1")
    assert SECRET not in repr(config)
    assert SECRET not in repr(config.redis_uris)
    assert SECRET not in str(list(config.describe()))


# -- credentials ----------------------------------------------------------------


def test_separate_credentials_override_the_uri() -> None:
    config = build(
        REDIS_URI="redis://uri-user:uri-pass@h:1", REDIS_USERNAME="env-user", REDIS_PASSWORD=SECRET
    )
    assert (config.username, config.password) == ("env-user", SECRET)
    assert SECRET not in repr(config)
    only_password = build(REDIS_URI="redis://uri-user:uri-pass@h:1", REDIS_PASSWORD=SECRET)
    assert (only_password.username, only_password.password) == ("uri-user", SECRET)


# -- TLS -------------------------------------------------------------------------


def test_ca_requires_rediss(tmp_path: Path, ca_file: Path) -> None:
    error = error_of(REDIS_URI="redis://h:1", REDIS_CA=str(ca_file))
    assert str(error) == "REDIS_CA requires REDIS_URI to use rediss://"
    assert build(REDIS_URI="rediss://h:1", REDIS_CA=str(ca_file)).redis_ca == ca_file


def test_ca_must_be_a_readable_pem_file(tmp_path: Path) -> None:
    assert "not an existing file" in str(error_of(REDIS_URI="rediss://h", REDIS_CA=str(tmp_path / "nope.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    error = error_of(REDIS_URI="rediss://h", REDIS_CA=str(junk))
    assert "not a PEM file of CA certificates" in str(error) and error.variable == "REDIS_CA"


# -- prefixes --------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["ovl:ROLES", "a:b:c", ":a", "x" * 128])
def test_prefixes_with_single_colons_are_accepted(prefix: str) -> None:
    assert build(REDIS_KEY_PREFIX=prefix).key_prefix == prefix
    assert build(REDIS_KEY_PREFIX_VAR="POD", POD=prefix).key_prefix == prefix


def test_overlapping_prefix_error_names_the_variable() -> None:
    error = error_of(REDIS_KEY_PREFIX="ovl::ROLES")
    assert str(error).startswith("REDIS_KEY_PREFIX: 'ovl::ROLES' is not a valid prefix: '::' and a final ':'")
    error = error_of(REDIS_KEY_PREFIX_VAR="POD", POD="ovl:")
    assert str(error).startswith("REDIS_KEY_PREFIX_VAR: the value of POD, 'ovl:' is not a valid prefix")


def test_static_prefix() -> None:
    config = build(REDIS_KEY_PREFIX="librechat-prod-v2")
    assert (config.key_prefix, config.key_prefix_source) == ("librechat-prod-v2", "REDIS_KEY_PREFIX")


def test_prefix_from_another_variable() -> None:
    config = build(REDIS_KEY_PREFIX_VAR="K_REVISION", K_REVISION="svc-00042-abc")
    assert (config.key_prefix, config.key_prefix_source) == ("svc-00042-abc", "K_REVISION")


def test_prefix_variable_must_be_set() -> None:
    error = error_of(REDIS_KEY_PREFIX_VAR="K_REVISION")
    assert "K_REVISION" in str(error) and "not set" in str(error)


def test_both_prefixes_are_an_error() -> None:
    error = error_of(REDIS_KEY_PREFIX_VAR="HOSTNAME", REDIS_KEY_PREFIX="x")
    assert str(error) == "Only either REDIS_KEY_PREFIX_VAR or REDIS_KEY_PREFIX can be set."


@pytest.mark.parametrize("prefix", ["has space", "a{b}c", "x" * 129, "ovl::ROLES", "ovl:", "a::b:c", "::"])
def test_bad_prefixes(prefix: str) -> None:
    assert error_of(REDIS_KEY_PREFIX=prefix).variable == "REDIS_KEY_PREFIX"
    assert error_of(REDIS_KEY_PREFIX_VAR="POD", POD=prefix).variable == "REDIS_KEY_PREFIX_VAR"


# -- forced namespaces -------------------------------------------------------------


def test_forced_in_memory_namespaces_are_trimmed() -> None:
    config = build(USE_REDIS="1", REDIS_URI="redis://h", FORCED_IN_MEMORY_CACHE_NAMESPACES=" ROLES , MESSAGES,")
    assert config.forced_in_memory == {CacheKeys.ROLES, CacheKeys.MESSAGES}
    assert not config.uses_redis("ROLES") and config.uses_redis("CONFIG_STORE")


def test_unknown_forced_namespace_is_a_startup_error() -> None:
    error = error_of(FORCED_IN_MEMORY_CACHE_NAMESPACES="ROLES,STATIC_CONFIG")
    assert str(error).startswith("Invalid cache keys in FORCED_IN_MEMORY_CACHE_NAMESPACES: STATIC_CONFIG. Valid keys: ")
    assert "SAML_SESSION" in str(error)


# -- numbers -----------------------------------------------------------------------


def test_numbers_accept_arithmetic() -> None:
    config = build(
        BAN_DURATION="1000 * 60 * 60 * 2", REDIS_PING_INTERVAL="(2 + 3) * 60",
        REDIS_RETRY_MAX_DELAY="1500", REDIS_CONNECT_TIMEOUT="2.5 * 1000", REDIS_MAX_LISTENERS="100",
    )
    assert (config.ban_duration, config.ping_interval) == (7200, 300)
    assert (config.retry_max_delay, config.connect_timeout, config.max_listeners) == (1.5, 2.5, 100)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BAN_DURATION", "two hours"),
        ("BAN_DURATION", "__import__('os')"),
        ("BAN_DURATION", "1 / 0"),
        ("BAN_DURATION", "-5"),
        ("BAN_DURATION", "2 ** 8"),
        ("REDIS_MAX_LISTENERS", "1.5"),
        ("REDIS_RETRY_MAX_ATTEMPTS", "ten"),
        ("REDIS_PING_INTERVAL", "()"),
        ("LIBRECACHE_MEMORY_MAX_ENTRIES", "0"),
        ("REDIS_CONNECT_TIMEOUT", "0"),
    ],
)
def test_bad_numbers_name_the_variable(name: str, value: str) -> None:
    error = error_of(**{name: value})
    assert name in str(error)


# -- sources ------------------------------------------------------------------------


def test_env_file_and_precedence(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "USE_REDIS=true\nREDIS_URI=redis://from-file:1\nREDIS_KEY_PREFIX=file\n# comment\nBAN_DURATION=1000\n"
    )
    config = CacheConfig.from_env({"REDIS_KEY_PREFIX": "env"}, env_file=env_file)
    assert config.use_redis and config.redis_uris[0].host == "from-file"
    assert config.key_prefix == "env"  # the environment wins over the file
    assert config.ban_duration == 1
    with pytest.raises(ConfigurationError, match="does not exist"):
        CacheConfig.from_env({}, env_file=tmp_path / "no")


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_KEY_PREFIX", "from-os")
    assert CacheConfig.from_env().key_prefix == "from-os"


def test_config_is_frozen_and_revalidated_on_evolve() -> None:
    config = build()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.use_redis = True  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="REDIS_URI is not set"):
        attrs.evolve(config, use_redis=True)


def test_each_setting_of_the_configuration_is_set_by_exactly_one_variable() -> None:
    """The variables' declarations are the only list of them: each names the
    attribute it sets, and ``from_env`` passes them on without naming any."""
    fields = [variable.field for variable in VARIABLES]
    assert sorted(fields) == sorted(attrs.fields_dict(CacheConfig))
    config = CacheConfig.from_env({"REDIS_URI": "redis://h", "REDIS_MAX_LISTENERS": "7",
                                   "LIBRECACHE_STREAM_MEMORY_MAX": "9"})
    assert (config.max_listeners, config.stream_memory_max) == (7, 9)


def test_every_variable_is_declared_once_with_help_and_a_valid_example() -> None:
    names = [variable.name for variable in VARIABLES]
    assert len(names) == len(set(names))
    for variable in VARIABLES:
        assert variable.help.strip()
        if variable.kind == "cafile":
            continue
        environ = {variable.name: variable.example}
        if variable.name in ("REDIS_USERNAME", "REDIS_PASSWORD", "USE_REDIS_CLUSTER", "USE_REDIS"):
            environ["REDIS_URI"] = "redis://h"
        if variable.name == "USE_REDIS_STREAMS":
            environ["REDIS_URI"] = "redis://h"
        if variable.name.startswith("REDIS_SENTINEL_"):
            environ.setdefault("REDIS_SENTINEL_MASTER", "mymaster")
            environ["REDIS_URI"] = "redis+sentinel://h:26379/0"
        if variable.name == "REDIS_KEY_PREFIX_VAR":
            environ[variable.example] = "rev1"
        if variable.name == "LIBRECACHE_FAIL_SAFE_THROTTLE":  # throttles a fail-safe
            environ["LIBRECACHE_FAIL_SAFE"] = variable.example.replace("=30", "=3600")
        CacheConfig.from_env(environ)


# -- REDIS_URI: hostile and careless input -------------------------------------

#: Every character RFC 3986 gives a meaning in a URI, and blanks-free others
#: people put in passwords.
DELIMITERS = ":/?#[]@!$&'()*+,;=%"


@pytest.mark.parametrize("char", list(DELIMITERS))
def test_unencoded_delimiters_in_a_password_work(char: str) -> None:
    password = f"Zq9{char}kT{char}{char}7wX"
    for uri in (f"redis://user:{password}@cache.example:6390/3", f"redis://:{password}@[::1]:6390/3"):
        parsed = build(USE_REDIS="true", REDIS_URI=uri).redis_uris[0]
        assert parsed.host in ("cache.example", "::1")
        assert (parsed.port, parsed.db) == (6390, 3)
        assert parsed.password == password  # "%kT%%7" holds no %XX escape: kept as typed
        assert password not in repr(build(USE_REDIS="true", REDIS_URI=uri))


@pytest.mark.parametrize("char", list(DELIMITERS))
@pytest.mark.parametrize(
    "template",
    [
        "redis://user:{p}@host:{port}/0",  # bad port
        "redis://user:{p}@my host:6379",  # blank in the host
        "redis://user:{p}@host:0",  # port 0
        "redis://user:{p}@host/99",  # database out of range
        "redis://user:{p}@host?ssl=true",  # query
        "http://user:{p}@host",  # scheme
        "redis://user:{p}@::1",  # IPv6 without brackets
        "redis://user:{p}@host,redis://user:{p}@host",  # the same address twice
        "redis://user:{p}@a,,redis://user:{p}@b",  # empty entry
        "user:{p}@host:6379",  # no scheme at all
        "redis://{p}@host:x",  # the secret in the user name's place
    ],
)
def test_no_part_of_a_password_in_any_error(template: str, char: str) -> None:
    secret = f"Zq9kT{char}7wX{char}s3"
    uri = template.format(p=secret, port="notaport")
    with pytest.raises(ConfigurationError) as caught:
        build(USE_REDIS="true", REDIS_URI=uri)
    message = str(caught.value)
    assert caught.value.variable == "REDIS_URI"
    for fragment in ("Zq9kT", "7wX", "s3", "user"):
        assert fragment not in message, message


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("redis://my host", "'redis://my host': the host holds a blank"),
        ("redis:// 127.0.0.1", "'redis:// 127.0.0.1': the host holds a blank"),
        ("redis://h:63 79", "'redis://h:63 79': the port holds a blank"),
        ("redis://h:0", "'redis://h:0': the port 0 is not a number from 1 to 65535"),
        ("redis://h:65536", "'redis://h:65536': the port 65536 is not a number from 1 to 65535"),
        ("redis://h:", "'redis://h:': the port '' is not a number from 1 to 65535"),
        ("redis://h:-1", "'redis://h:-1': the port '-1' is not a number from 1 to 65535"),
        ("redis://h/16", "'redis://h/16': database 16 is not a number from 0 to 15"),
        ("redis://h/99", "'redis://h/99': database 99 is not a number from 0 to 15"),
        ("redis://::1", "an IPv6 address must be written in brackets"),
        ("redis://[::1", "the IPv6 address has no closing ]"),
        ("redis://[::g]:1", "[::g] is not a valid IPv6 address"),
        ("redis://999.1.1.1", "'999.1.1.1' is not a valid IPv4 address"),
        ("redis://h_st<>", "the host 'h_st<>' is not a host name or IP address"),
        ("redis://a,", "empty entry"),
        ("redis://a, b:1", "'redis://a, b:1': a comma must be followed by another redis:// or rediss:// URI"),
        ("redis://u:SECRET@h:bad", "'redis://***@h:bad': the port 'bad'"),
    ],
)
def test_bad_uri_messages(uri: str, message: str) -> None:
    error = error_of(USE_REDIS="true", REDIS_URI=uri)
    assert message in str(error)
    assert str(error).startswith("REDIS_URI")
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("uri", "host", "port", "db"),
    [
        ("redis://[::1]:7000/3", "::1", 7000, 3),
        ("redis://[2001:db8::1]", "2001:db8::1", 6379, 0),
        ("redis://10.0.0.5:1/15", "10.0.0.5", 1, 15),
        ("redis://h:65535/", "h", 65535, 0),
        ("REDIS://Cache-1.example.com", "Cache-1.example.com", 6379, 0),
        ("redis://my_host~x", "my_host~x", 6379, 0),
    ],
)
def test_good_uris(uri: str, host: str, port: int, db: int) -> None:
    parsed = build(REDIS_URI=uri).redis_uris[0]
    assert (parsed.host, parsed.port, parsed.db) == (host, port, db)


def test_percent_encoding_is_decoded_and_commas_in_passwords_stay() -> None:
    parsed = build(REDIS_URI="redis://u%3Ax:p%25%40,q@h:1,redis://u%3Ax:p%25%40,q@h:2").redis_uris
    assert [(uri.username, uri.password, uri.port) for uri in parsed] == [("u:x", "p%@,q", 1), ("u:x", "p%@,q", 2)]


@pytest.mark.parametrize("name", ["REDIS_URI", "REDIS_KEY_PREFIX"])
def test_documented_forms_behave_as_documented(name: str) -> None:
    (variable,) = [variable for variable in VARIABLES if variable.name == name]
    assert variable.accepts and variable.rejects
    for good in (variable.example, *variable.accepts):
        companions = {"REDIS_SENTINEL_MASTER": "mymaster"} if "+sentinel://" in good else {}
        build(**{name: good}, **companions)
    for bad in variable.bad_values():
        assert error_of(**{name: bad}).variable == name


@pytest.mark.parametrize("char", list(DELIMITERS + " "))
def test_mask_uri_hides_all_of_any_userinfo(char: str) -> None:
    from librecache.uris import mask_uri

    secret = f"us{char}er:pa{char}ss"
    assert mask_uri(f"redis://{secret}@h:1/0") == "redis://***@h:1/0"
    assert mask_uri(f"rediss://{secret}@a:1,rediss://{secret}@b:2") == "rediss://***@a:1,rediss://***@b:2"
    assert mask_uri(f"{secret}@h:1") == "***@h:1"  # no scheme
    assert mask_uri("redis://h:1/0") == "redis://h:1/0"


def test_display_shows_no_part_of_the_userinfo() -> None:
    config = build(REDIS_URI="redis://someone:pw@h:1/2")
    assert [uri.display() for uri in config.redis_uris] == ["redis://***@h:1/2"]
    assert dict(config.describe())["uris"] == "redis://***@h:1/2"


def test_an_unknown_librecache_variable_is_a_warning_naming_the_closest(tmp_path: Path) -> None:
    """A typo changes nothing, so it is said: a warning of librecache's
    category (an error in this suite: pyproject's filterwarnings), naming
    the variable and the closest known one; other prefixes are not ours."""
    from librecache import UnknownVariableWarning

    with pytest.warns(UnknownVariableWarning) as caught:
        CacheConfig.from_env({"LIBRECACHE_NAMESPACE_TTL": "ROLES=5", "REDIS_WHATEVER": "x", "PATH": "/bin"})
    assert [str(warning.message) for warning in caught] == [
        "LIBRECACHE_NAMESPACE_TTL is not a librecache variable and is ignored; "
        "did you mean LIBRECACHE_NAMESPACE_TTLS?"]
    env_file = tmp_path / ".env"
    env_file.write_text("LIBRECACHE_ZZZ=1\n")
    with pytest.warns(UnknownVariableWarning, match="LIBRECACHE_ZZZ is not a librecache variable and is ignored$"):
        CacheConfig.from_env({}, env_file=env_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CacheConfig.from_env({"LIBRECACHE_STRICT": "true"})  # known: nothing said


# -- when the database is sick: fail-safe, time-outs, eager refresh, jitter ----------------------------


@pytest.mark.parametrize(("environ", "variable", "words"), [
    ({"LIBRECACHE_FAIL_SAFE": "ROLES=3600"}, "LIBRECACHE_FAIL_SAFE", "ROLES has no TTL"),
    ({"LIBRECACHE_FAIL_SAFE": "APP_CONFIG=60", "LIBRECACHE_FORMATS": "APP_CONFIG=keyv",
      "LIBRECACHE_NAMESPACE_TTLS": "APP_CONFIG=60"}, "LIBRECACHE_FAIL_SAFE", "keyv format"),
    ({"LIBRECACHE_FAIL_SAFE": "FLOWS=-1"}, "LIBRECACHE_FAIL_SAFE", "0 or more"),
    ({"LIBRECACHE_FAIL_SAFE": "NOPE=60"}, "LIBRECACHE_FAIL_SAFE", "NOPE"),
    ({"LIBRECACHE_FAIL_SAFE_THROTTLE": "FLOWS=5"}, "LIBRECACHE_FAIL_SAFE_THROTTLE", "no fail-safe"),
    ({"LIBRECACHE_FAIL_SAFE": "FLOWS=60", "LIBRECACHE_FAIL_SAFE_THROTTLE": "FLOWS=0"},
     "LIBRECACHE_FAIL_SAFE_THROTTLE", "greater than 0"),
    ({"LIBRECACHE_SOFT_TIMEOUT": "FLOWS=soon"}, "LIBRECACHE_SOFT_TIMEOUT", "milliseconds"),
    ({"LIBRECACHE_HARD_TIMEOUT": "FLOWS=0"}, "LIBRECACHE_HARD_TIMEOUT", "greater than 0"),
    ({"LIBRECACHE_SOFT_TIMEOUT": "FLOWS=500", "LIBRECACHE_HARD_TIMEOUT": "FLOWS=200"},
     "LIBRECACHE_SOFT_TIMEOUT", "not shorter"),
    ({"LIBRECACHE_EAGER_REFRESH": "FLOWS=1"}, "LIBRECACHE_EAGER_REFRESH", "between 0 and 1"),
    ({"LIBRECACHE_EAGER_REFRESH": "FLOWS=0"}, "LIBRECACHE_EAGER_REFRESH", "between 0 and 1"),
    ({"LIBRECACHE_EAGER_REFRESH": "ROLES=0.5"}, "LIBRECACHE_EAGER_REFRESH", "no TTL"),
    ({"LIBRECACHE_TTL_JITTER": "ROLES=30"}, "LIBRECACHE_TTL_JITTER", "no TTL"),
    ({"LIBRECACHE_TTL_JITTER": "FLOWS"}, "LIBRECACHE_TTL_JITTER", "NAMESPACE=seconds"),
])
def test_bad_resilience_settings_fail_at_startup_naming_the_variable(environ: dict[str, str], variable: str,
                                                                   words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as raised:
        CacheConfig.from_env(environ)
    assert raised.value.variable == variable and variable in str(raised.value)


def test_the_resilience_settings_make_each_namespace_s_policy() -> None:
    from librecache.engine.policy import Policy

    config = CacheConfig.from_env({
        "LIBRECACHE_NAMESPACE_TTLS": "FLOWS=100", "LIBRECACHE_FAIL_SAFE": "FLOWS=3600",
        "LIBRECACHE_FAIL_SAFE_THROTTLE": "FLOWS=5", "LIBRECACHE_SOFT_TIMEOUT": "FLOWS=200",
        "LIBRECACHE_HARD_TIMEOUT": "FLOWS=2000", "LIBRECACHE_EAGER_REFRESH": "FLOWS=0.8",
        "LIBRECACHE_TTL_JITTER": "FLOWS=30"})
    assert config.policy("FLOWS") == Policy(grace=10.0, fail_safe=3600.0, fail_safe_throttle=5.0, soft_timeout=0.2,
                                            hard_timeout=2.0, eager_refresh=0.8, ttl_jitter=30.0)
    assert config.storage_expiry("FLOWS") == 100 + 3600 + 30  # kept for the fail-safe, and the longest jitter
    assert config.storage_expiry("MESSAGES") == 60 + 6  # TTL and grace, as before
    assert config.policy("ROLES") == Policy()
