"""The config file contract: every key, every problem message, every rule across fields."""

from __future__ import annotations

import ipaddress
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.config import (
    CertificateEntry,
    ClientAuth,
    Config,
    ConfigError,
    ConfigProblem,
    Endpoint,
    ListenerConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    Profile,
    Protocol,
    TlsMode,
    TlsSettings,
    TlsVersion,
    load,
    load_config,
    load_config_with_warnings,
    parse,
    parse_config,
)

# Issue 2 §2, verbatim: the contract's own example.
ISSUE_EXAMPLE = """\
shutdown_timeout = 30.0

[log]
format = "console"            # console | json
level = "info"

[tls]                         # server-side TLS defaults for every listener
min_version = "TLSv1.2"

[[certificate]]
cert = "certs/mail.pem"       # PEM, leaf first, chain may follow
key = "certs/mail.key"        # PEM private key

[[listener]]
name = "submission"
listen = "0.0.0.0:587"        # HOST:PORT or [V6]:PORT
protocol = "smtp"             # smtp | pop3 | tcp
tls = "starttls"              # implicit | starttls | auto | none
backend = "127.0.0.1:2525"
auth_requires_tls = true      # default true: AUTH (POP3: USER/PASS/APOP/AUTH) hidden and refused before TLS
require_tls = false           # true: only EHLO/HELO/STARTTLS/NOOP/RSET/QUIT (POP3: CAPA/STLS/QUIT) before TLS
starttls_exclude = []         # client networks (CIDR) to which STARTTLS is not offered, e.g. a LAN
detect_timeout = 0.5          # auto: seconds to wait for a ClientHello before sending the greeting
handshake_timeout = 10.0
idle_timeout = 300.0
"""  # noqa: E501 (verbatim, comments included)

CERTIFICATE = """
[[certificate]]
cert = "mail.pem"
key = "mail.key"
"""

LISTENER = """
[[listener]]
name = "submission"
listen = "127.0.0.1:587"
protocol = "smtp"
tls = "starttls"
backend = "127.0.0.1:2525"
"""

MINIMAL = CERTIFICATE + LISTENER


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that `Path("tlsgate.toml")` names the file as a user would."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "tlsgate.toml") -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(text))
    return [str(problem) for problem in caught.value.problems]


def warnings_of(text: str) -> list[str]:
    _, found = load_config_with_warnings(write(text))
    return [str(warning) for warning in found]


# ---- what loads --------------------------------------------------------------------------


@pytest.mark.usefixtures("here")
def test_the_issue_example_loads() -> None:
    config = load_config(write(ISSUE_EXAMPLE))
    assert config.tls.min_version is TlsVersion.TLSV1_2
    assert config.listeners[0].backend == (Endpoint("127.0.0.1", 2525),)
    assert config.listeners[0].listen == Endpoint("0.0.0.0", 587)


def test_every_contract_key_round_trips(here: Path) -> None:
    text = """
    shutdown_timeout = 12.5
    [log]
    format = "json"
    level = "debug"
    [tls]
    min_version = "TLSv1.3"
    max_version = "TLSv1.3"
    [[certificate]]
    cert = "a.pem"
    key = "/etc/keys/a.key"
    [[certificate]]
    cert = "b.pem"
    key = "b.key"
    [[listener]]
    name = "pop3"
    listen = "[::1]:0"
    protocol = "pop3"
    tls = "auto"
    backend = ["10.0.0.1:110", "[2001:db8::1]:110", "mail.example.com:1110"]
    auth_requires_tls = false
    require_tls = true
    starttls_exclude = ["192.168.0.0/16", "2001:db8::/32", "10.1.2.3"]
    detect_timeout = 1
    handshake_timeout = 2.5
    idle_timeout = 60
    connect_timeout = 3.0
    """
    config = load_config(write(text))
    assert config == Config(
        source=Path("tlsgate.toml"),
        shutdown_timeout=12.5,
        log=LogConfig(format=LogFormat.JSON, level=LogLevel.DEBUG),
        tls=TlsSettings(min_version=TlsVersion.TLSV1_3, max_version=TlsVersion.TLSV1_3),
        certificates=(
            CertificateEntry(cert=here / "a.pem", key=Path("/etc/keys/a.key")),
            CertificateEntry(cert=here / "b.pem", key=here / "b.key"),
        ),
        listeners=(
            ListenerConfig(
                name="pop3",
                listen=Endpoint("::1", 0),
                protocol=Protocol.POP3,
                tls=TlsMode.AUTO,
                backend=(
                    Endpoint("10.0.0.1", 110),
                    Endpoint("2001:db8::1", 110),
                    Endpoint("mail.example.com", 1110),
                ),
                auth_requires_tls=False,
                require_tls=True,
                starttls_exclude=(
                    ipaddress.ip_network("192.168.0.0/16"),
                    ipaddress.ip_network("2001:db8::/32"),
                    ipaddress.ip_network("10.1.2.3/32"),
                ),
                detect_timeout=1.0,
                handshake_timeout=2.5,
                idle_timeout=60.0,
                connect_timeout=3.0,
            ),
        ),
    )
    assert isinstance(config.listeners[0].detect_timeout, float)


@pytest.mark.usefixtures("here")
def test_absent_optional_keys_take_the_model_defaults() -> None:
    config = load_config(write(MINIMAL))
    assert config.shutdown_timeout == 30.0
    assert config.log == LogConfig()
    assert config.tls == TlsSettings()
    listener = config.listeners[0]
    assert (listener.auth_requires_tls, listener.require_tls) == (True, False)
    assert listener.starttls_exclude == ()
    assert listener.detect_timeout == 0.5
    assert listener.handshake_timeout == 10.0
    assert listener.idle_timeout == 300.0


def test_every_listener_field_is_a_config_key() -> None:
    # The path keys' parsers are made per document (they resolve against the file's
    # directory); ciphersuites is a known key only to be refused with a reason.
    keys = set(load._LISTENER_KEYS) | {"client_ca", "backend_ca", "backend_cert", "backend_key"}
    assert keys == {f.name for f in fields(ListenerConfig)} | {"ciphersuites"}


@pytest.mark.usefixtures("here")
def test_warn_is_an_alias_for_warning() -> None:
    config = load_config(write('[log]\nlevel = "warn"\n' + MINIMAL))
    assert config.log.level is LogLevel.WARNING


@pytest.mark.usefixtures("here")
def test_listen_port_zero_means_any_free_port_and_may_repeat() -> None:
    second = LISTENER.replace('"submission"', '"other"')
    text = (CERTIFICATE + LISTENER + second).replace("127.0.0.1:587", "127.0.0.1:0")
    assert [listener.listen.port for listener in load_config(write(text)).listeners] == [0, 0]


def test_relative_paths_resolve_against_the_config_files_directory(here: Path) -> None:
    (here / "elsewhere").mkdir()
    path = write(MINIMAL, "etc/tlsgate/tlsgate.toml")
    config = load_config(path)
    assert config.certificates[0].cert == here / "etc" / "tlsgate" / "mail.pem"
    assert config.certificates[0].key == here / "etc" / "tlsgate" / "mail.key"
    assert config.source == path


def test_parse_config_takes_an_already_parsed_document(tmp_path: Path) -> None:
    data = {
        "certificate": [{"cert": "c.pem", "key": "c.key"}],
        "listener": [
            {
                "name": "smtps",
                "listen": "0.0.0.0:465",
                "protocol": "smtp",
                "tls": "implicit",
                "backend": "127.0.0.1:25",
            }
        ],
    }
    config = parse_config(data, tmp_path / "x.toml")
    assert config.certificates[0].cert == tmp_path / "c.pem"


# ---- one test per problem shape ----------------------------------------------------------


@pytest.mark.usefixtures("here")
def test_the_message_format_from_the_issue() -> None:
    second = LISTENER.replace('"submission"', '"smtp"').replace(":587", ":25")
    text = MINIMAL + second.replace('"127.0.0.1:2525"', '"localhost"')
    assert problems(text) == [
        'tlsgate.toml: listener[1].backend: expected HOST:PORT, got "localhost"'
    ]


def listener_with(line: str) -> str:
    """MINIMAL with one listener line added or, for a key it already has, replaced."""
    key = line.split("=")[0].strip()
    kept = [entry for entry in LISTENER.splitlines() if entry.split("=")[0].strip() != key]
    return CERTIFICATE + "\n".join([*kept, line]) + "\n"


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "bakend = 1",
            'listener[0].bakend: expected a known key (did you mean "backend"?), '
            'got unknown key "bakend"',
        ),
        ("listen = 587", "listener[0].listen: expected HOST:PORT, got 587"),
        (
            'listen = "127.0.0.1:65536"',
            "listener[0].listen: expected HOST:PORT with PORT from 0 to 65535, "
            'got "127.0.0.1:65536"',
        ),
        (
            'backend = "127.0.0.1:0"',
            'listener[0].backend: expected HOST:PORT with PORT from 1 to 65535, got "127.0.0.1:0"',
        ),
        (
            'backend = "::1:25"',
            "listener[0].backend: expected [V6]:PORT (an IPv6 address needs brackets), "
            'got "::1:25"',
        ),
        ('listen = "[::1]"', 'listener[0].listen: expected [V6]:PORT, got "[::1]"'),
        (
            'backend = "[10.0.0.1]:25"',
            "listener[0].backend: expected [V6]:PORT with an IPv6 address inside the brackets, "
            'got "[10.0.0.1]:25"',
        ),
        (
            'backend = ":25"',
            "listener[0].backend: expected HOST:PORT with HOST an IP address or a DNS name, "
            'got ":25"',
        ),
        (
            'backend = "300.1.1.1:25"',
            "listener[0].backend: expected HOST:PORT with HOST an IP address or a DNS name, "
            'got "300.1.1.1:25"',
        ),
        (
            "backend = []",
            "listener[0].backend: expected HOST:PORT or a non-empty list of HOST:PORT, got []",
        ),
        (
            'backend = ["10.0.0.1:25", "mail"]',
            'listener[0].backend[1]: expected HOST:PORT, got "mail"',
        ),
        (
            'protocol = "imap"',
            'listener[0].protocol: expected one of "smtp", "pop3", "tcp", got "imap"',
        ),
        (
            'tls = "STARTTLS"',
            'listener[0].tls: expected one of "implicit", "starttls", "auto", "none", '
            'got "STARTTLS"',
        ),
        (
            'auth_requires_tls = "yes"',
            'listener[0].auth_requires_tls: expected true or false, got "yes"',
        ),
        (
            "idle_timeout = 0",
            "listener[0].idle_timeout: expected a number of seconds greater than 0, got 0",
        ),
        (
            "detect_timeout = -0.5",
            "listener[0].detect_timeout: expected a number of seconds greater than 0, got -0.5",
        ),
        (
            "connect_timeout = true",
            "listener[0].connect_timeout: expected a number of seconds greater than 0, got true",
        ),
        (
            "handshake_timeout = inf",
            "listener[0].handshake_timeout: expected a number of seconds greater than 0, got inf",
        ),
        (
            'starttls_exclude = ["10.0.0.1/8"]',
            "listener[0].starttls_exclude[0]: expected a network address without host bits set "
            '(did you mean 10.0.0.0/8?), got "10.0.0.1/8"',
        ),
        (
            'starttls_exclude = "10.0.0.0/8"',
            'listener[0].starttls_exclude: expected a list of CIDR networks, got "10.0.0.0/8"',
        ),
        (
            'name = "sub mission"',
            'listener[0].name: expected a name of up to 64 letters, digits, ".", "_" or "-", '
            'got "sub mission"',
        ),
        (
            'protocol = "tcp"',
            'listener[0].tls: expected "implicit", "auto" or "none" with protocol "tcp", '
            'got "starttls"',
        ),
    ],
)
def test_listener_value_problems(line: str, message: str) -> None:
    assert problems(listener_with(line)) == [f"tlsgate.toml: {message}"]


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "shutdown_timout = 1\n" + MINIMAL,
            'shutdown_timout: expected a known key (did you mean "shutdown_timeout"?), '
            'got unknown key "shutdown_timout"',
        ),
        (
            "[metrics]\nlisten = 1\n" + MINIMAL,
            "metrics.listen: expected HOST:PORT, got 1",
        ),
        (
            '[metrics]\nlisten = "127.0.0.1:9464"\npath = "/m"\n' + MINIMAL,
            'metrics.path: expected one of listen, got unknown key "path"',
        ),
        (
            'metrics = "127.0.0.1:9464"\n' + MINIMAL,
            'metrics: expected a table, got "127.0.0.1:9464"',
        ),
        (
            'shutdown_timeout = "30s"\n' + MINIMAL,
            'shutdown_timeout: expected a number of seconds greater than 0, got "30s"',
        ),
        ('log = "json"\n' + MINIMAL, 'log: expected a table, got "json"'),
        (
            '[log]\nlevel = "verbose"\n' + MINIMAL,
            'log.level: expected one of "debug", "info", "warning", "error", got "verbose"',
        ),
        (
            '[log]\nformat = "text"\n' + MINIMAL,
            'log.format: expected one of "console", "json", got "text"',
        ),
        (
            "[log]\ncolour = true\n" + MINIMAL,
            'log.colour: expected one of format, level, got unknown key "colour"',
        ),
        (
            '[tls]\nmin_version = "TLSv1.4"\n' + MINIMAL,
            'tls.min_version: expected one of "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", '
            'got "TLSv1.4"',
        ),
        (
            '[tls]\nmin_version = "TLSv1.3"\nmax_version = "TLSv1.2"\n' + MINIMAL,
            'tls.min_version: expected a version no higher than tls.max_version ("TLSv1.2"), '
            'got "TLSv1.3"',
        ),
        (
            '[[certificate]]\nkey = "a.key"\n' + LISTENER,
            "certificate[0].cert: expected a value (cert, or else pkcs12, is required), "
            "got nothing",
        ),
        (
            '[[certificate]]\ncert = "a.pem"\npkcs12 = "mail.p12"\n' + LISTENER,
            "certificate[0].pkcs12: expected no pkcs12 next to cert (one or the other), "
            'got "mail.p12"',
        ),
        (
            '[[certificate]]\npkcs12 = "mail.p12"\nkey = "mail.key"\n' + LISTENER,
            "certificate[0].key: expected no key with pkcs12 (the PKCS#12 file holds the key), "
            'got "mail.key"',
        ),
        (
            '[[certificate]]\ncert = ""\nkey = "k"\n' + LISTENER,
            'certificate[0].cert: expected a file path, got ""',
        ),
        (
            CERTIFICATE + '[listener]\nname = "x"\n',
            "listener: expected an array of tables ([[listener]]), got a table",
        ),
        (CERTIFICATE, "listener: expected at least one [[listener]], got none"),
        (
            LISTENER,
            'listener[0].tls: expected "none" (no [[certificate]] is configured), got "starttls"',
        ),
    ],
)
def test_document_problems(text: str, message: str) -> None:
    assert problems(text) == [f"tlsgate.toml: {message}"]


@pytest.mark.usefixtures("here")
def test_a_missing_required_listener_key_is_named() -> None:
    text = CERTIFICATE + LISTENER.replace('backend = "127.0.0.1:2525"\n', "")
    assert problems(text) == [
        "tlsgate.toml: listener[0].backend: expected a value (the key is required), got nothing"
    ]


@pytest.mark.usefixtures("here")
def test_duplicate_listener_names_name_both_entries() -> None:
    other = LISTENER.replace(":587", ":25").replace('"submission"', '"smtp"')
    text = MINIMAL + other + other.replace(":25", ":26")
    assert problems(text) == [
        'tlsgate.toml: listener[2].name: expected a unique name, got "smtp" (also listener[1])'
    ]


@pytest.mark.usefixtures("here")
def test_two_listeners_on_one_address_is_an_error() -> None:
    other = LISTENER.replace('"submission"', '"other"')
    assert problems(MINIMAL + other) == [
        "tlsgate.toml: listener[1].listen: expected an address no other listener uses, "
        'got "127.0.0.1:587" (also listener[0])'
    ]


@pytest.mark.usefixtures("here")
def test_every_problem_is_reported_not_just_the_first() -> None:
    text = (
        '[log]\nlevel = "loud"\n'
        + CERTIFICATE
        + LISTENER.replace('"smtp"', '"smtpx"').replace('"127.0.0.1:2525"', '"x"')
        + 'idle_timeout = -1\nstarttls_exclude = ["x", "10.0.0.0/8", 7]\n'
    )
    found = problems(text)
    assert [line.split(": ")[1] for line in found] == [
        "log.level",
        "listener[0].protocol",
        "listener[0].backend",
        "listener[0].idle_timeout",
        "listener[0].starttls_exclude[0]",
        "listener[0].starttls_exclude[2]",
    ]


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize("key", ["auth_requires_tls", "require_tls"])
def test_mediation_keys_on_a_plaintext_listener_only_warn(key: str) -> None:
    text = listener_with('tls = "none"') + f"{key} = true\n"
    assert warnings_of(text) == [
        f'tlsgate.toml: listener[0].{key}: expected no {key} on a tls = "none" listener '
        "(it is ignored there), got true"
    ]


@pytest.mark.usefixtures("here")
def test_warnings_found_before_an_error_travel_with_it() -> None:
    text = listener_with('tls = "none"') + "require_tls = true\nidle_timeout = 0\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(text))
    assert [w.key for w in caught.value.warnings] == ["listener[0].require_tls"]


# ---- certificates and TLS policy (issue 3) ---------------------------------------------------


def test_certificate_and_tls_policy_keys_round_trip(here: Path) -> None:
    text = """
    reload_certificates_interval = 60
    [tls]
    profile = "modern"
    ciphers = "ECDHE+AESGCM"
    [[certificate]]
    name = "mail"
    cert = "mail.pem"
    [[certificate]]
    pkcs12 = "old.p12"
    password_file = "secrets/old.pass"
    default = true
    [[listener]]
    name = "imaps"
    listen = "127.0.0.1:993"
    protocol = "tcp"
    tls = "implicit"
    backend = "127.0.0.1:143"
    profile = "legacy"
    min_version = "TLSv1.1"
    max_version = "TLSv1.2"
    ciphers = "HIGH:!aNULL"
    certificates = ["mail", "old"]
    client_auth = "required"
    client_ca = "clients/ca.pem"
    """
    config = load_config(write(text))
    assert config.reload_certificates_interval == 60.0
    assert config.tls == TlsSettings(profile=Profile.MODERN, ciphers="ECDHE+AESGCM")
    assert config.certificates == (
        CertificateEntry(name="mail", cert=here / "mail.pem"),
        CertificateEntry(
            pkcs12=here / "old.p12", password_file=here / "secrets/old.pass", default=True
        ),
    )
    listener = config.listeners[0]
    assert (listener.profile, listener.min_version, listener.max_version) == (
        Profile.LEGACY,
        TlsVersion.TLSV1_1,
        TlsVersion.TLSV1_2,
    )
    assert listener.ciphers == "HIGH:!aNULL"
    assert listener.certificates == ("mail", "old")
    assert (listener.client_auth, listener.client_ca) == (
        ClientAuth.REQUIRED,
        here / "clients/ca.pem",
    )


@pytest.mark.usefixtures("here")
def test_tls_policy_defaults_to_intermediate_with_no_reload_timer() -> None:
    config = load_config(write(MINIMAL))
    assert config.tls.profile is Profile.INTERMEDIATE
    assert config.tls.versions == (TlsVersion.TLSV1_2, TlsVersion.TLSV1_3)
    assert config.reload_certificates_interval is None
    listener = config.listeners[0]
    assert listener.tls_settings(config.tls) == config.tls
    assert (listener.certificates, listener.client_auth) == ((), ClientAuth.NONE)


@pytest.mark.usefixtures("here")
def test_a_reload_interval_of_zero_means_off() -> None:
    assert (
        load_config(
            write("reload_certificates_interval = 0\n" + MINIMAL)
        ).reload_certificates_interval
        is None
    )


def test_a_listener_overrides_tls_key_by_key() -> None:
    defaults = TlsSettings(profile=Profile.LEGACY, min_version=TlsVersion.TLSV1_2, ciphers="X")
    listener = ListenerConfig(
        name="a",
        listen=Endpoint("127.0.0.1", 0),
        protocol=Protocol.TCP,
        tls=TlsMode.IMPLICIT,
        backend=(Endpoint("127.0.0.1", 1),),
        profile=Profile.MODERN,
        max_version=TlsVersion.TLSV1_3,
    )
    assert listener.tls_settings(defaults) == TlsSettings(
        profile=Profile.MODERN,
        min_version=TlsVersion.TLSV1_2,
        max_version=TlsVersion.TLSV1_3,
        ciphers="X",
    )


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[tls]\nciphersuites = "TLS_AES_128_GCM_SHA256"\n' + MINIMAL,
            "tls.ciphersuites: expected no ciphersuites key (not supported by Python's ssl, which "
            "cannot choose TLS 1.3 suites; OpenSSL's defaults, all AEAD, are used), got "
            '"TLS_AES_128_GCM_SHA256"',
        ),
        (
            listener_with('ciphersuites = "TLS_AES_128_GCM_SHA256"'),
            "listener[0].ciphersuites: expected no ciphersuites key (not supported by Python's "
            "ssl, which cannot choose TLS 1.3 suites; OpenSSL's defaults, all AEAD, are used), "
            'got "TLS_AES_128_GCM_SHA256"',
        ),
        (
            '[tls]\nprofile = "paranoid"\n' + MINIMAL,
            'tls.profile: expected one of "modern", "intermediate", "legacy", got "paranoid"',
        ),
        (
            '[tls]\nprofile = "modern"\nmax_version = "TLSv1.2"\n' + MINIMAL,
            'tls.max_version: expected a version no lower than profile "modern" ("TLSv1.3"), '
            'got "TLSv1.2"',
        ),
        (
            '[tls]\nmax_version = "TLSv1.2"\n' + listener_with('profile = "modern"'),
            'listener[0].profile: expected a profile allowing tls.max_version ("TLSv1.2"), '
            'got "modern"',
        ),
        (
            '[tls]\nmax_version = "TLSv1.2"\n' + listener_with('min_version = "TLSv1.3"'),
            "listener[0].min_version: expected a version no higher than tls.max_version "
            '("TLSv1.2"), got "TLSv1.3"',
        ),
        (
            listener_with('ciphers = ""'),
            "listener[0].ciphers: expected an OpenSSL cipher string such as "
            '"ECDHE+AESGCM:ECDHE+CHACHA20", got ""',
        ),
        (
            listener_with("certificates = []"),
            "listener[0].certificates: expected a non-empty list of certificate names, got []",
        ),
        (
            listener_with('client_auth = "required"'),
            'listener[0].client_ca: expected a CA file or directory (client_auth = "required" '
            "verifies clients with it), got nothing",
        ),
        (
            listener_with('client_auth = "maybe"'),
            'listener[0].client_auth: expected one of "none", "optional", "required", got "maybe"',
        ),
        (
            CERTIFICATE + "default = true\n" + CERTIFICATE + "default = true\n" + LISTENER,
            "certificate[1].default: expected at most one default certificate, got true (also "
            "certificate[0])",
        ),
        (
            '[[certificate]]\ncert = "a.pem"\nname = "two words"\n' + LISTENER,
            "certificate[0].name: expected a certificate name (printable, no spaces), "
            'got "two words"',
        ),
        (
            "reload_certificates_interval = -5\n" + MINIMAL,
            "reload_certificates_interval: expected a number of seconds greater than 0, or 0 for "
            "off, got -5",
        ),
    ],
)
def test_certificate_and_tls_problems(text: str, message: str) -> None:
    assert problems(text) == [f"tlsgate.toml: {message}"]


@pytest.mark.usefixtures("here")
def test_versions_below_tls12_without_the_legacy_profile_warn() -> None:
    assert warnings_of('[tls]\nmin_version = "TLSv1"\n' + MINIMAL) == [
        'tlsgate.toml: tls.min_version: expected profile = "legacy" for versions below TLSv1.2 '
        '(profile "intermediate" has no cipher for them), got "TLSv1"'
    ]
    assert warnings_of('[tls]\nprofile = "legacy"\nmin_version = "TLSv1.1"\n' + MINIMAL) == []


@pytest.mark.usefixtures("here")
def test_client_ca_without_client_auth_warns() -> None:
    assert warnings_of(listener_with('client_ca = "ca.pem"')) == [
        'tlsgate.toml: listener[0].client_ca: expected client_auth = "optional" or "required" '
        'with client_ca (ignored without), got "ca.pem"'
    ]


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    ("line", "rendered"),
    [
        ('profile = "legacy"', '"legacy"'),
        ('certificates = ["mail"]', '["mail"]'),
        ('client_auth = "optional"', '"optional"'),
    ],
)
def test_tls_keys_on_a_plaintext_listener_only_warn(line: str, rendered: str) -> None:
    key = line.split(" ")[0]
    assert warnings_of(listener_with('tls = "none"') + line + "\n") == [
        f'tlsgate.toml: listener[0].{key}: expected no {key} on a tls = "none" listener '
        f"(it is ignored there), got {rendered}"
    ]


# ---- the file itself ---------------------------------------------------------------------


@pytest.mark.usefixtures("here")
def test_a_toml_syntax_error_names_the_file_and_line() -> None:
    assert problems(MINIMAL + "\nbroken = \n") == [
        "tlsgate.toml: line 13, column 10: expected valid TOML, got a syntax error: Invalid value"
    ]


@pytest.mark.usefixtures("here")
def test_a_missing_file_is_one_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(Path("nowhere.toml"))
    assert caught.value.problems == (
        ConfigProblem("nowhere.toml", "", "a readable file", "No such file or directory"),
    )
    assert (
        str(caught.value) == "nowhere.toml: expected a readable file, got No such file or directory"
    )


@pytest.mark.usefixtures("here")
def test_a_file_that_is_not_utf8_is_one_problem() -> None:
    Path("latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Path("latin1.toml"))
    assert [str(p) for p in caught.value.problems] == [
        "latin1.toml: byte 5: expected UTF-8 text, got an invalid byte"
    ]


# ---- the small parsers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("mail.example.com:25", Endpoint("mail.example.com", 25)),
        ("localhost:65535", Endpoint("localhost", 65535)),
        ("[::]:587", Endpoint("::", 587)),
        ("[fe80::1%eth0]:25", Endpoint("fe80::1%eth0", 25)),
        ("backend_1:25", Endpoint("backend_1", 25)),
        ("mail.example.com.:25", Endpoint("mail.example.com.", 25)),
    ],
)
def test_endpoints_that_parse(text: str, endpoint: Endpoint) -> None:
    assert parse.parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "host:",
        "host:port",
        "host:+25",
        "host:\uff12\uff15",
        "-bad-:25",
        "a..b:25",
        "[::1]25",
    ],
)
def test_endpoints_that_do_not_parse(text: str) -> None:
    with pytest.raises(parse.Invalid):
        parse.parse_endpoint(text)


def test_render_cuts_long_values_to_one_short_line() -> None:
    rendered = parse.render("x" * 500)
    assert len(rendered) == parse.MAX_RENDERED_CHARS
    assert rendered.endswith("…")
    assert parse.render({"a": 1}) == "a table"
    assert parse.render([1, "a", False]) == '[1, "a", false]'


@given(st.text(max_size=40))
def test_any_text_either_parses_to_an_endpoint_that_round_trips_or_is_invalid(text: str) -> None:
    try:
        endpoint = parse.parse_endpoint(text)
    except parse.Invalid:
        return
    assert parse.parse_endpoint(str(endpoint)) == endpoint


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists))
def test_render_is_always_one_short_line(value: object) -> None:
    rendered = parse.render(value)
    assert "\n" not in rendered
    assert len(rendered) <= parse.MAX_RENDERED_CHARS


def test_ticket_key_rotation_defaults_to_twelve_hours_and_zero_turns_it_off(
    tmp_path: Path,
) -> None:
    default = tmp_path / "default.toml"
    default.write_text(MINIMAL)
    assert load_config(default).ticket_key_rotation_interval == 43200.0
    off = tmp_path / "off.toml"
    off.write_text("ticket_key_rotation_interval = 0\n" + MINIMAL)
    assert load_config(off).ticket_key_rotation_interval is None


# ---- user and group (issue 5: dropping root without systemd) -------------------------------


@pytest.mark.usefixtures("here")
def test_user_and_group_are_optional_names_that_round_trip() -> None:
    assert (load_config(write(MINIMAL)).user, load_config(write(MINIMAL)).group) == (None, None)
    config = load_config(write('user = "tlsgate"\ngroup = "mail-tls"\n' + MINIMAL))
    assert (config.user, config.group) == ("tlsgate", "mail-tls")


@pytest.mark.usefixtures("here")
def test_check_does_not_need_the_user_or_group_to_exist() -> None:
    # CONTRACT.md: a config is checked on one machine and run on another.
    config = load_config(write('user = "no-such-user-x"\ngroup = "no-such-group-x"\n' + MINIMAL))
    assert (config.user, config.group) == ("no-such-user-x", "no-such-group-x")


@pytest.mark.parametrize(
    ("line", "got"),
    [
        ("user = 1000", "1000"),
        ('user = "1000"', '"1000"'),
        ('user = ""', '""'),
        ('group = "mail tls"', '"mail tls"'),
        ('group = "a/b"', '"a/b"'),
        (f'user = "{"u" * 33}"', f'"{"u" * 33}"'),
    ],
)
@pytest.mark.usefixtures("here")
def test_user_and_group_must_be_account_names(line: str, got: str) -> None:
    key = line.split(" ", 1)[0]
    assert problems(line + "\n" + MINIMAL) == [
        f'tlsgate.toml: {key}: expected a user or group name of up to 32 letters, digits, "_", '
        f'"." or "-", got {got}'
    ]
