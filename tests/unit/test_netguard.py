"""Where webhooks may go, as written (llmapp/netguard.py, pure): every spelling of a private, loopback,
link-local or metadata address refused, hosts folded as resolvers fold them, the admins' allow-list,
and a registry upstream judged by its form only. Sending, and the checks at send time, are
tests/integration/test_destinations.py's."""

import pytest

from conftest import resolver
from llmapp import netguard

REFUSED = [
    "http://127.0.0.1:5000/hook",  # the platform
    "http://127.0.0.1:6379/",  # Redis
    "http://127.0.0.1:18000/v1/models",  # an app server
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://[::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00:ec2::254]/",  # a metadata service's IPv6 address (unique local)
    "http://localhost:8080/",
    "http://LOCALHOST./",
    "http://app.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://2130706433/",  # 127.0.0.1 in decimal
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",  # 169.254.169.254, mapped
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://user:password@example.com/",
    "http://example.com@127.0.0.1/",
    "ftp://example.com/",
    "gopher://example.com/",
    "http://exa mple.com/",
    "http://example.com/\r\nX-Injected: 1",
    "http://1.2.3.999/",
    # Hosts the sender could never send (httpx can't IDNA-encode them): refused when saved, not left
    # to fail at send time.
    "http://ⅼocalhost/",  # U+217C SMALL ROMAN NUMERAL FIFTY: "localhost" to a resolver (NFKC)
    "http://xn--/",
    "http://a☃b.example/",
    "http://127.0.0.1\\.example.com/",
    # Nominally global, yet cloud metadata: Azure's WireServer, the IETF protocol assignments (Oracle).
    "http://168.63.129.16/",
    "http://[::ffff:a83f:8110]/",  # 168.63.129.16, mapped
    "http://192.0.0.192/opc/v2/instance/",
    "http://192.0.0.1/",
]


ACCEPTED = [
    "https://audit.example.com/hook?token=abc",
    "http://8.8.8.8/",
    "http://[2606:4700::1111]/",
    "http://audit/hook",
    "http://münchen.example/hook",  # an internationalised name that encodes (xn--mnchen-3ya.example)
    "http://192.0.1.1/",  # next to the protocol assignments, not in them
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_destinations_as_written(url):
    assert netguard.Guard().url_error(url)


@pytest.mark.parametrize("url", ACCEPTED)
def test_destinations_on_the_internet_as_written(url):
    assert netguard.Guard().url_error(url) is None


def test_a_host_is_folded_as_a_resolver_folds_it_before_the_rules():
    """A resolver reads ``ⅼocalhost`` (U+217C) or full-width letters and digits as plain ASCII (NFKC):
    so do the rules, whether the host comes from a URL or from a connection, before any look-up."""
    for host in ("ⅼocalhost", "ｌｏｃａｌｈｏｓｔ", "app.ⅼocalhost"):
        with pytest.raises(netguard.Refused, match="is this host itself"):
            netguard.Guard().check_host(host)
    with pytest.raises(netguard.Refused, match="a loopback address"):
        netguard.Guard().check_host("１２７.０.０.１")
    resolve = resolver("8.8.8.8")  # were it looked up, the answer would pass
    with pytest.raises(netguard.Refused, match="“localhost” is this host itself"):
        netguard.Guard(resolve=resolve).addresses("ⅼocalhost", 80)
    assert resolve.calls == []


def test_a_host_that_cant_be_encoded_is_refused_with_the_reason():
    for url in ("http://ⅼocalhost/", "http://xn--/", "http://a☃b.example/"):
        assert "is not a valid host name (it can't be encoded for DNS)" in netguard.Guard().url_error(url), url
        assert netguard.url_shape_error(url, query=False), url  # a registry upstream too: httpx sends it


def test_the_allow_list_names_hosts_addresses_and_networks():
    guard = netguard.Guard.from_setting(" 127.0.0.1 , hooks.internal,10.1.0.0/16,,[fd00::1]")
    for url in ("http://127.0.0.1:9/", "http://hooks.internal/", "http://10.1.2.3/", "http://[fd00::1]/"):
        assert guard.url_error(url) is None, url
    for url in ("http://127.0.0.2/", "http://10.2.0.1/", "http://localhost/", "http://user@127.0.0.1/"):
        assert guard.url_error(url), url


def test_a_registry_upstream_is_checked_for_its_form_only():
    for url in ("http://vllm:8000/v1", "http://127.0.0.1:8000/v1", "https://10.0.0.5/v1"):
        assert netguard.url_shape_error(url, query=False) is None  # an admin's upstream may be private
    for url in ("http://u:p@vllm/v1", "http://vllm/v1?x=1", "http://vllm/v1#x", "http://vl lm/", "http:///v1"):
        assert netguard.url_shape_error(url, query=False), url
