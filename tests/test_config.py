"""CacheConfig.from_env: every variable, every startup error."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from librecache import CacheConfig, CacheKeys, ConfigurationError
from librecache.config import VARIABLES

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
        ("redis://h:notaport", "not a valid URI"),
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
    assert "user:***@host" in str(error)
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


@pytest.mark.parametrize("prefix", ["has space", "a{b}c", "x" * 129])
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
        CacheConfig.from_env(environ)
