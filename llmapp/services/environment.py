"""What an application's environment variables may and may not do in its server.

A member's variables reach their application's server process, and only there: the engine and the
libraries read them (thread counts, offline switches, an upstream's key). They never decide how a
program starts: every variable that an interpreter, the dynamic loader, the C library or a library
reads at start-up to load code, configuration or trust, that picks which program or shell runs, that
sends the server's traffic elsewhere, or that the platform sets itself, is refused at its field with
the reason. Servers also start with ``python -I`` (PYTHON* ignored whatever reaches them) and, when
the platform runs as root, as an unprivileged user (see server_processes.server_user).
"""

import re

from ..i18n import _l
from . import any_case

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a variable's name, for every program that reads one
ENV_NAME_RULE = _l("Use letters, digits and _, not starting with a digit.")

# (why, exact names, name prefixes), each list written as words: names compare upper-cased, since some
# libraries read the lower-case spelling too (http_proxy). Each why is the whole refusal, %(name)s the name.
_CLASSES = (
    (
        _l(
            "%(name)s can't be set for an application: it changes how Python starts (servers ignore PYTHON* variables)."
        ),
        "",
        "PYTHON",
    ),
    (
        _l("%(name)s can't be set for an application: the dynamic loader or the C library reads it at start-up."),
        "GLIBC_TUNABLES GCONV_PATH LOCPATH NLSPATH HOSTALIASES RES_OPTIONS RESOLV_HOST_CONF LOCALDOMAIN TZDIR TZ "
        "TERMINFO TERMINFO_DIRS TERMCAP",
        "LD_ MALLOC_ DYLD_",
    ),
    (
        _l("%(name)s can't be set for an application: it picks which program or shell runs."),
        "PATH SHELL BASH_ENV ENV IFS PS4 SHELLOPTS BASHOPTS CDPATH BROWSER EDITOR VISUAL PAGER MANPAGER "
        "SUDO_ASKPASS HOME USER LOGNAME TMPDIR TEMP TMP CC CXX CPP LD CUDACXX LDSHARED CFLAGS CXXFLAGS CPPFLAGS "
        "LDFLAGS CPLUS_INCLUDE_PATH C_INCLUDE_PATH CONDA_EXE CONDA_PREFIX",
        "BASH_FUNC_ GIT_ SSH_",
    ),
    (
        _l("%(name)s can't be set for an application: it makes another interpreter run code."),
        "PERL5OPT PERL5LIB PERLLIB PERL5DB RUBYOPT RUBYLIB NODE_OPTIONS NODE_PATH JAVA_TOOL_OPTIONS _JAVA_OPTIONS "
        "JDK_JAVA_OPTIONS CLASSPATH TCLLIBPATH R_PROFILE R_PROFILE_USER",
        "LUA_",
    ),
    (
        _l(
            "%(name)s can't be set for an application: a library loads code, configuration or trusted "
            "certificates from it."
        ),
        "SSL_CERT_FILE SSL_CERT_DIR SSLKEYLOGFILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE MPLCONFIGDIR VIRTUAL_ENV NETRC "
        "SETUPTOOLS_USE_DISTUTILS PROMETHEUS_MULTIPROC_DIR DISPLAY WAYLAND_DISPLAY FORWARDED_ALLOW_IPS "
        "USE_HUB_KERNELS USE_TORCH_XLA EAGER_IMPORT TRUST_REMOTE_CODE",
        "OPENSSL_ KRB5 XDG_ _PYTHON __PYVENV FSSPEC_ PYTZ_",
    ),
    (
        # The engines' own settings, whole namespaces (torch alone reads more than a hundred, one of
        # which imports a module named in it; vLLM's and llama.cpp's are free-form flags, where the serving
        # fields are the validated way): what a member may tune is named in ALLOWED below.
        _l(
            "%(name)s can't be set for an application: the engine's libraries read it to decide what they load "
            "or where they write."
        ),
        "",
        "TORCH PYTORCH_ CUDA_ CUDNN_ NCCL_ NVTOOLSEXT ROCM_ ROCR_ HIP_ HSA_ ROCP_ ZE_ KINETO_ PT_HPU_ FX_ "
        "COMPILE_STROBELIGHT ENABLE_PYTORCH_ OMP_ KMP_ GOMP_ MKL_ HF_ HUGGINGFACE_ HUGGING_FACE_ TRANSFORMERS_ "
        "TOKENIZERS_ SAFETENSORS_ PROMETHEUS_ TRITON_ NUMBA_ WERKZEUG_ FLASK_ INDUCTOR_ AOT_ AOTI ACCELERATE_ "
        "HALIDE_ QUACK_ CUTLASS_ CUTEDSL_ NVSHMEM_ ROCSHMEM_ NPY_ VLLM_ LLAMA_ GGML_ XLLAMACPP",
    ),
    (
        _l("%(name)s can't be set for an application: it sends the server's traffic or data elsewhere."),
        "HF_ENDPOINT OPENAI_BASE_URL OPENAI_API_BASE MASTER_ADDR MASTER_PORT",
        "HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY FTP_PROXY WS_PROXY WSS_PROXY MLFLOW_ WANDB_ CLEARML_ COMET_ "
        "SWANLAB_ TENSORBOARD_ NEPTUNE_ DVCLIVE_",
    ),
    (
        _l("%(name)s can't be set for an application: the platform sets it."),
        "REDIS_URL DATABASE_URL SECRET_KEY GUNICORN_CMD_ARGS WEB_CONCURRENCY",
        "LLMAPP_ UVICORN_",
    ),
)
REFUSED = tuple((why, frozenset(names.split()), tuple(prefixes.split())) for why, names, prefixes in _CLASSES)
# In the refused namespaces, what a member may set: thread counts, devices, offline switches, verbosity,
# the Hugging Face token (the key of a hub, for libraries that ask for one), an upstream vLLM's API key
# (a managed vLLM is given its own token over it).
ALLOWED = frozenset(
    "OMP_NUM_THREADS MKL_NUM_THREADS CUDA_VISIBLE_DEVICES HIP_VISIBLE_DEVICES ROCR_VISIBLE_DEVICES "
    "TOKENIZERS_PARALLELISM HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HF_HUB_DISABLE_TELEMETRY "
    "HF_HUB_DISABLE_PROGRESS_BARS HF_HUB_DISABLE_EXPERIMENTAL_WARNING HF_HUB_DISABLE_IMPLICIT_TOKEN "
    "HF_HUB_DISABLE_SYMLINKS_WARNING HF_HUB_VERBOSITY TRANSFORMERS_VERBOSITY TRANSFORMERS_NO_ADVISORY_WARNINGS "
    "HF_TOKEN PYTORCH_CUDA_ALLOC_CONF VLLM_API_KEY".split()
)


def refused_pattern(edge: str = "") -> str:
    """The names ``refusal`` refuses, as one regular expression over a name of ENV_NAME's letters (which
    upper-case as ASCII does), for the API's document: the same constants, any case, ALLOWED excepted.
    ``edge``: a pattern for what may surround the name (what the service strips)."""
    names = sorted({n for _, exact, _ in REFUSED for n in exact})
    prefixes = sorted({p for _, _, starts in REFUSED for p in starts})
    allowed = "|".join(any_case(n) for n in sorted(ALLOWED))
    refused = "|".join([*(any_case(n) + edge + "$" for n in names), *(any_case(p) for p in prefixes)])
    return f"^{edge}(?!(?:{allowed}){edge}$)(?:{refused})"


def refusal(name: str) -> str | None:
    """Why ``name`` may not be one of an application's variables, or None when it may."""
    upper = name.upper()
    if upper in ALLOWED:
        return None
    for why, names, prefixes in REFUSED:
        if upper in names or upper.startswith(prefixes):
            return str(why) % {"name": name}
    return None
