"""When a server can't run in a child of the fork server: what the libraries read as they load differs."""

from llmapp.runtime.forkserver import cold_start_reason

STARTED_WITH = {"PATH": "/usr/bin", "HOME": "/nonexistent", "LC_CTYPE": "C.UTF-8", "HF_HUB_OFFLINE": "1"}


def test_the_same_environment_plus_what_is_set_per_server_or_read_later_runs_warm():
    env = {
        **STARTED_WITH,
        "HOME": "/root",  # the account's own, set per server
        "USER": "llmapp-server-200001",
        "LLMAPP_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LLMAPP_CHAIN_KEY": "k",
        "HF_TOKEN": "hf_x",  # read when used
        "CUDA_VISIBLE_DEVICES": "0",
        "OMP_NUM_THREADS": "2",  # the child sets torch's threads itself
    }
    assert cold_start_reason(env, STARTED_WITH) == ""


def test_the_engine_default_offline_switch_counts_as_set():
    env = {k: v for k, v in STARTED_WITH.items() if k != "HF_HUB_OFFLINE"}
    assert cold_start_reason(env, STARTED_WITH) == ""


def test_a_variable_added_changed_or_missing_is_named():
    assert cold_start_reason({**STARTED_WITH, "GREETING": "hi"}, STARTED_WITH) == (
        "GREETING may be read while torch and transformers load"
    )
    assert "HF_HUB_OFFLINE" in cold_start_reason({**STARTED_WITH, "HF_HUB_OFFLINE": "0"}, STARTED_WITH)
    without_locale = {k: v for k, v in STARTED_WITH.items() if k != "LC_CTYPE"}
    assert cold_start_reason(without_locale, STARTED_WITH).startswith("LC_CTYPE")
    both = cold_start_reason({**STARTED_WITH, "B_VAR": "1", "A_VAR": "1"}, STARTED_WITH)
    assert both.startswith("A_VAR, B_VAR ")


def test_a_thread_count_that_is_not_a_number_runs_cold():
    assert "OMP_NUM_THREADS" in cold_start_reason({**STARTED_WITH, "OMP_NUM_THREADS": "two"}, STARTED_WITH)
