"""Which environment variables a run config may set for a flow's process.

A run config's ``env`` is chosen by whoever registers the flow or creates a
run (the latter may be a lesser credential than the former), yet it lands in
a process that the agent starts with its own credentials. So variables that
change how that process or its children load code, where they connect or
whom they trust, and flowbus's own variables, are refused at registration
and at run creation (VALIDATION_ERROR), and dropped again by the agent in
case an older row holds them (docs/security.md, "Run environment").

Touches no subjects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from flowbus.schemas.common import ENV_VALUE_MAX as MAX_ENV_VALUE_CHARS
from flowbus.schemas.common import MAX_ENV_VARS, NAME_MAX

MAX_ENV_TOTAL_CHARS = 64 * 1024

# Matched case-insensitively: Windows reads names that way, and tools read
# both spellings of some (curl honours http_proxy before HTTP_PROXY).
DENIED_ENV_PATTERNS: tuple[str, ...] = (
    # -- how the process loads code --
    "LD_*",  # the dynamic loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT
    "DYLD_*",  # the same on macOS
    "GCONV_PATH",  # glibc loads iconv modules from here
    "GLIBC_TUNABLES",  # glibc's loader parses it (CVE-2023-4911)
    "PYTHON*",  # PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONBREAKPOINT (imports a module), ...
    "PATH",  # which programs a subprocess call runs
    "HOME",  # user site-packages (.pth files run code), ~/.gitconfig, ~/.ssh/config, ~/.netrc
    "XDG_CONFIG_HOME",  # git's and other tools' config files, which can name commands
    "BASH_ENV",  # sourced by every non-interactive bash
    "ENV",  # sourced by sh started as an interactive or POSIX shell
    "BASH_FUNC_*",  # exported bash functions replace commands in every bash child
    "SHELLOPTS",  # e.g. xtrace, which makes PS4 run
    "BASHOPTS",
    "PS4",  # expanded (command substitution included) on every traced line
    "IFS",  # how a shell splits words: changes what a script's commands mean
    "PERL5*",  # PERL5LIB, PERL5OPT (-M loads a module), PERL5DB
    "PERLLIB",
    "RUBYOPT",  # -r loads a file
    "RUBYLIB",
    "NODE_OPTIONS",  # --require loads a file
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",  # -javaagent loads code into every JVM
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "GIT_*",  # GIT_SSH_COMMAND, GIT_CONFIG_* (core.fsmonitor runs a command), GIT_EXEC_PATH, GIT_ASKPASS
    "SSH_ASKPASS*",
    "OPENSSL_*",  # OPENSSL_CONF can load an engine (a shared library)
    "PIP_*",  # pip's index and options: where installed code comes from
    # -- where it connects and whom it trusts --
    "*_PROXY",  # HTTP_PROXY, HTTPS_PROXY, ALL_PROXY (NO_PROXY too: harmless to lose)
    "SSL_CERT_*",  # the trust store: a CA of the caller's choosing intercepts TLS
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "SSLKEYLOGFILE",  # writes TLS session keys: the NATS connection could be read
    "HOSTALIASES",  # name resolution
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "OTEL_*",  # the OTLP exporter's endpoint and headers: spans (run data) go elsewhere
    # -- flowbus's own: the agent's NATS URL and credentials, the run's
    # identity, every setting the runner reads --
    "FLOWBUS_*",
)


def denied_env_name(name: str) -> bool:
    """True when a run config may not set ``name`` (DENIED_ENV_PATTERNS)."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern) for pattern in DENIED_ENV_PATTERNS)


def env_problems(env: Mapping[str, str]) -> list[str]:
    """Why ``env`` may not be a run config's environment; empty when it may."""
    problems: list[str] = []
    if len(env) > MAX_ENV_VARS:
        problems.append(f"at most {MAX_ENV_VARS} environment variables, got {len(env)}")
    total = sum(len(k) + len(v) for k, v in env.items())
    if total > MAX_ENV_TOTAL_CHARS:
        problems.append(f"environment variables take at most {MAX_ENV_TOTAL_CHARS} characters in all, got {total}")
    invalid = [k for k in env if not k or "=" in k or "\0" in k or len(k) > NAME_MAX]
    if invalid:
        problems.append(
            f"not valid environment variable names (empty, with '=' or NUL, or over {NAME_MAX} characters): "
            f"{sorted(invalid)!r}"
        )
    bad_values = sorted(k for k, v in env.items() if "\0" in v or len(v) > MAX_ENV_VALUE_CHARS)
    if bad_values:
        problems.append(f"values with NUL or over {MAX_ENV_VALUE_CHARS} characters: {bad_values!r}")
    denied = sorted(k for k in env if k not in invalid and denied_env_name(k))
    if denied:
        problems.append(
            f"run_config.env may not set {denied!r}: variables that change how the flow's process loads code, "
            "where it connects, or flowbus's own (FLOWBUS_*) are refused (see docs/security.md)"
        )
    return problems


def check_run_env(env: dict[str, str] | None) -> dict[str, str] | None:
    """``env`` as it is, or ValueError naming every problem (pydantic turns it into VALIDATION_ERROR)."""
    if env is None:
        return None
    problems = env_problems(env)
    if problems:
        raise ValueError("; ".join(problems))
    return env


def allowed_run_env(env: Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """The part of ``env`` a flow's process may get, and the names dropped.

    For the agent: a row stored before these rules (or written around them)
    may still hold what creation now refuses.
    """
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in (env or {}).items():
        valid = name and "=" not in name and "\0" not in name and "\0" not in value
        if valid and not denied_env_name(name):
            kept[name] = value
        else:
            dropped.append(name)
    return kept, sorted(dropped)
