"""What an application's environment variables may and may not do in its server.

A member's variables reach their application's server process, and only there: the engine and the
libraries read them (thread counts, offline switches, an upstream's key). They never decide how a
program starts: every variable that an interpreter, the dynamic loader, the C library or a library
reads at start-up to load code, configuration or trust, that picks which program or shell runs, that
sends the server's traffic elsewhere, or that the platform sets itself, is refused at its field with
the reason. Servers also start with ``python -I`` (PYTHON* ignored whatever reaches them) and, when
the platform runs as root, as an unprivileged user (see deployments.server_user).
"""

# (why, exact names, name prefixes), each list written as words: names compare upper-cased, since some
# libraries read the lower-case spelling too (http_proxy).
_CLASSES = (
    ("it changes how Python starts (servers ignore PYTHON* variables)", "", "PYTHON"),
    (
        "the dynamic loader or the C library reads it at start-up",
        "GLIBC_TUNABLES GCONV_PATH LOCPATH NLSPATH HOSTALIASES RES_OPTIONS RESOLV_HOST_CONF LOCALDOMAIN TZDIR "
        "TERMINFO TERMINFO_DIRS TERMCAP",
        "LD_ MALLOC_ DYLD_",
    ),
    (
        "it picks which program or shell runs",
        "PATH SHELL BASH_ENV ENV IFS PS4 SHELLOPTS BASHOPTS CDPATH BROWSER EDITOR VISUAL PAGER MANPAGER "
        "SUDO_ASKPASS HOME USER LOGNAME TMPDIR TEMP TMP",
        "BASH_FUNC_ GIT_ SSH_",
    ),
    (
        "it makes another interpreter run code",
        "PERL5OPT PERL5LIB PERLLIB PERL5DB RUBYOPT RUBYLIB NODE_OPTIONS NODE_PATH JAVA_TOOL_OPTIONS _JAVA_OPTIONS "
        "JDK_JAVA_OPTIONS CLASSPATH TCLLIBPATH R_PROFILE R_PROFILE_USER",
        "LUA_",
    ),
    (
        "a library loads code, configuration or trusted certificates from it",
        "SSL_CERT_FILE SSL_CERT_DIR SSLKEYLOGFILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE HF_HOME HF_HUB_CACHE "
        "HF_MODULES_CACHE HF_TOKEN_PATH TRANSFORMERS_CACHE TORCH_HOME TORCH_EXTENSIONS_DIR MPLCONFIGDIR CUDA_HOME "
        "VIRTUAL_ENV",
        "OPENSSL_ KRB5 XDG_ TORCHINDUCTOR_ TRITON_",
    ),
    (
        "it sends the server's traffic elsewhere",
        "HF_ENDPOINT OPENAI_BASE_URL OPENAI_API_BASE",
        "HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY FTP_PROXY WS_PROXY WSS_PROXY",
    ),
    (
        "the platform sets it",
        "REDIS_URL DATABASE_URL SECRET_KEY GUNICORN_CMD_ARGS WEB_CONCURRENCY",
        "LLMAPP_ UVICORN_",
    ),
)
REFUSED = tuple((why, frozenset(names.split()), tuple(prefixes.split())) for why, names, prefixes in _CLASSES)


def refusal(name: str) -> str | None:
    """Why ``name`` may not be one of an application's variables, or None when it may."""
    upper = name.upper()
    for why, names, prefixes in REFUSED:
        if upper in names or upper.startswith(prefixes):
            return f"{name} can't be set for an application: {why}."
    return None
