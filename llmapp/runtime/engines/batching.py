"""The transformers engine's batcher: continuous batching on one thread.

Every request being generated is a row of one batch, and the batch moves one decode step at a time (one
forward pass, one token for each row). Between two steps, requests that arrived join: their prompts are
prefilled together in one forward pass, and their KV cache is merged into the batch's; a prompt longer
than ``PREFILL_CHUNK`` tokens is prefilled a chunk per step, so the running rows wait for one chunk, not
for the whole prompt. A row leaves as soon as it is done (its last token, an end of text, a stop string),
cancelled (its client left) or timed out: nobody waits for the batch's longest row, and a newcomer never
waits for company. At most ``batch_size`` rows generate; more wait, first come first served.

Each row samples with its own settings from the same forward pass, as ``generate()`` would alone: no end
of text before ``min_tokens``, log-probabilities read after that constraint and before temperature and
top-p (the model's distribution over the tokens it may emit), temperature, top-p, and a random generator
of its own when it has a seed (the same tokens whatever else runs; the others draw from torch's).

The batch's cache is left-padded: each row's padding is masked and its positions count its own tokens
only. When rows leave, the columns that are padding for every row left are cut off.

Measured against transformers' own continuous batching (``generate_batch``) in bench/serving.py; numbers
in bench/RESULTS.md.
"""

import asyncio
import logging
import queue
import threading
from collections import Counter, deque

from ..errors import APIError
from . import CompletionOutput, GenerationRequest, RequestOutput, TokenLogprob, one

log = logging.getLogger("llmapp.server")

GENERATE_TOP_K = 50  # generate()'s own top-k where the model's generation_config sets none (0: none)


class GenerationRow:
    """One request's row in the batcher. Written by the batcher thread, read by the event loop."""

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], loop):
        self.request, self.prompt_ids, self.loop = request, prompt_ids, loop
        self.tokens: list[int] = []
        self.text = ""  # decoded so far, up to a stop string
        self.sent = 0  # characters of text already handed to the stream
        self.tokens_sent = 0  # and tokens
        self.logprobs: list[TokenLogprob] | None = [] if request.logprobs else None
        self.logprobs_sent = 0
        self.finish_reason: str | None = None
        self.cancelled = threading.Event()
        self.settled = False  # answered (resolve): a row is answered once
        self.deltas: asyncio.Queue = asyncio.Queue()  # CompletionOutputs of a stream, then None
        self.done = loop.create_future()  # the whole answer (a RequestOutput), or the error
        # A cancelled row's error is read by nobody (its client left): marked seen, so asyncio does not
        # log "exception was never retrieved" for every client that leaves.
        self.done.add_done_callback(lambda done: done.cancelled() or done.exception())
        # The batcher's own state of the row.
        self.prefilled = 0  # prompt tokens in its cache so far
        self.cache = None  # a long prompt's cache while it is prefilled in chunks
        self.generator = None  # a seeded row's random generator

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def position(self) -> int:
        """The position of the row's next input token: its prompt and the tokens generated before it."""
        return len(self.prompt_ids) + len(self.tokens) - 1

    def emit(self, delta: CompletionOutput) -> None:
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, delta)

    def resolve(self, result: RequestOutput | BaseException) -> None:
        if self.settled:
            return
        self.settled = True

        def settle():
            if not self.done.done():
                (self.done.set_exception if isinstance(result, BaseException) else self.done.set_result)(result)
            self.deltas.put_nowait(None)

        self.loop.call_soon_threadsafe(settle)

    def answer(self) -> RequestOutput:
        output = CompletionOutput(0, self.text, list(self.tokens), self.logprobs, self.finish_reason)
        return one(output, len(self.prompt_ids), len(self.tokens))


class Batcher:
    """The generation loop over a loaded model (see the module's docstring)."""

    # A prompt longer than this is prefilled in chunks of this many tokens, one chunk between two decode
    # steps of the running rows. Measured in bench/serving.py (a long prompt arriving beside streams).
    PREFILL_CHUNK = 256

    def __init__(self, model, tokenizer, torch, device: str, batch_size: int, eos_ids: set, pad_id: int):
        self.model, self.tokenizer, self.torch, self.device = model, tokenizer, torch, device
        self.batch_size, self.eos_ids, self.pad_id = batch_size, eos_ids, pad_id
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        # What generate() took from the model's generation_config besides the request's settings.
        defaults = getattr(model, "generation_config", None)
        self.repetition_penalty = float(getattr(defaults, "repetition_penalty", None) or 1.0)
        top_k = getattr(defaults, "top_k", None)
        self.top_k = GENERATE_TOP_K if top_k is None else int(top_k)
        suppressed = sorted(getattr(defaults, "suppress_tokens", None) or ())  # e.g. a padding token
        self.suppressed = torch.tensor(suppressed, dtype=torch.long, device=device) if suppressed else None
        self.queue: queue.Queue = queue.Queue()  # submitted, not yet seen by the batcher thread
        self.waiting: deque[GenerationRow] = deque()  # seen, waiting for room in the batch
        self.prefilling: list[GenerationRow] = []  # admitted; their prompts go in before they generate
        self.rows: list[GenerationRow] = []  # generating: the batch, in the cache's order
        self.cache = self.mask = None  # the batch's KV cache (left-padded) and its attention mask
        self.batch_sizes: Counter = Counter()  # decode steps by their number of rows
        self.joined = 0  # rows that joined a batch already generating
        self.prefill_chunks = 0  # chunks of long prompts prefilled between decode steps
        self.cancelled = 0
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, request: GenerationRequest, prompt_ids: list[int]) -> GenerationRow:
        row = GenerationRow(request, prompt_ids, asyncio.get_running_loop())
        self.queue.put(row)
        return row

    @staticmethod
    def mergeable(cache) -> bool:
        """Whether rows can join and leave a batch with this kind of cache: plain key/value layers only
        (a sliding window's or a recurrent layer's state is not a sequence to pad and concatenate)."""
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))

    @property
    def idle(self) -> bool:
        return not (self.rows or self.prefilling or self.waiting) and self.queue.empty()

    # the loop ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not (self.rows or self.prefilling or self.waiting):
                self.waiting.append(self.queue.get())  # nothing to do until a request comes
            self._admit()
            try:
                with self.torch.inference_mode():
                    self._prefill()
                    if self.rows:
                        self._decode()
            except Exception as e:  # noqa: BLE001 - one failed step must not stop the server
                rows = self.rows + self.prefilling
                log.exception("generation failed for a batch of %d", len(rows))
                for row in rows:
                    row.resolve(APIError(500, f"Generation failed: {type(e).__name__}.", "server_error"))
                self.rows, self.prefilling, self.cache, self.mask = [], [], None, None

    def _admit(self) -> None:
        """Arrivals join the waiting line; cancelled rows leave wherever they are; the first waiting rows
        fill the batch's free places."""
        while True:
            try:
                self.waiting.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self.waiting = deque(row for row in self.waiting if not self._cancel_if_asked(row))
        self.prefilling = [row for row in self.prefilling if not self._cancel_if_asked(row)]
        leaving = [i for i, row in enumerate(self.rows) if self._cancel_if_asked(row)]
        if leaving:
            self._leave(leaving)
        while self.waiting and len(self.rows) + len(self.prefilling) < self.batch_size:
            self.prefilling.append(self.waiting.popleft())

    def _cancel_if_asked(self, row: GenerationRow) -> bool:
        """Stop a row whose client left or whose timeout fired; True when it is (now) cancelled."""
        if row.cancelled.is_set() and not row.finished:
            row.finish_reason = "cancelled"
            self.cancelled += 1
            log.info("generation cancelled after %d tokens", len(row.tokens))
            row.resolve(APIError(499, "The generation was cancelled."))
        return row.finish_reason == "cancelled"

    # prefill: prompts into the cache, the first token -------------------------------------------------

    def _prefill(self) -> None:
        """The short prompts that wait, together in one forward pass; one chunk of the first long one."""
        torch = self.torch
        short = [row for row in self.prefilling if len(row.prompt_ids) <= self.PREFILL_CHUNK]
        long = next((row for row in self.prefilling if len(row.prompt_ids) > self.PREFILL_CHUNK), None)
        if long is not None:
            chunk = long.prompt_ids[long.prefilled : long.prefilled + self.PREFILL_CHUNK]
            start = long.prefilled
            out = self.model(
                input_ids=torch.tensor([chunk], device=self.device),
                attention_mask=torch.ones(1, start + len(chunk), dtype=torch.long, device=self.device),
                position_ids=torch.arange(start, start + len(chunk), device=self.device)[None],
                cache=long.cache,
                use_cache=True,
                logits_to_keep=1,  # the last position's only (as generate() asks)
            )
            long.cache, long.prefilled = out.cache, start + len(chunk)
            self.prefill_chunks += 1
            if long.prefilled == len(long.prompt_ids):
                mask = torch.ones(1, long.prefilled, dtype=torch.long, device=self.device)
                self._start([long], out.logits[:, -1, :], long.cache, mask)
                long.cache = None
        if short:
            width = max(len(row.prompt_ids) for row in short)
            lengths = torch.tensor([[len(row.prompt_ids)] for row in short], device=self.device)
            ids = [[self.pad_id] * (width - len(row.prompt_ids)) + row.prompt_ids for row in short]
            mask = (torch.arange(width, device=self.device) >= width - lengths).long()
            out = self.model(
                input_ids=torch.tensor(ids, device=self.device),
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            self._start(short, out.logits[:, -1, :], out.cache, mask)

    def _start(self, rows: list[GenerationRow], logits, cache, mask) -> None:
        """Rows whose prompts are in ``cache``: their first tokens, then into the batch (those not done)."""
        self.prefilling = [row for row in self.prefilling if row not in rows]
        for row in rows:
            if not row.request.greedy and row.request.seed is not None:
                row.generator = self.torch.Generator(self.device).manual_seed(row.request.seed)
        self._take_tokens(rows, logits)
        if self.rows:
            self.joined += len(rows)
        self._join(rows, cache, mask)
        if self.rows:
            width = self.mask.shape[1]
            log.debug("batch of %d request(s): %d joined, prompt width %d", len(self.rows), len(rows), width)

    # decode: one token for every row --------------------------------------------------------------

    def _decode(self) -> None:
        torch, rows = self.torch, self.rows
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], dim=1)
        out = self.model(
            input_ids=torch.tensor([[row.tokens[-1]] for row in rows], device=self.device),
            attention_mask=self.mask,
            position_ids=torch.tensor([[row.position] for row in rows], device=self.device),
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
        self.batch_sizes[len(rows)] += 1
        self._take_tokens(rows, out.logits[:, -1, :])
        done = [i for i, row in enumerate(rows) if row.finished]
        if done:
            self._leave(done)

    def _take_tokens(self, rows: list[GenerationRow], logits) -> None:
        """Sample each row's next token with its own settings and hand it on."""
        tokens, logprobs = self._sample(rows, logits)
        for row, token, scores in zip(rows, tokens, logprobs, strict=True):
            entry = self._logprob(scores, token, row.request.top_logprobs) if scores is not None else None
            self._advance(row, token, entry)
            if row.finished:
                self._finish(row)

    def _sample(self, rows: list[GenerationRow], logits) -> tuple[list[int], list]:
        """Each row's token, through ``generate()``'s processors in its order, with the row's settings:
        the model's repetition penalty, no end of text before min_tokens, the model's suppressed tokens
        (the log-probabilities are read here), then, when sampling, temperature, the model's top-k, top-p."""
        torch = self.torch
        scores = logits.float().clone()
        if self.repetition_penalty != 1.0:
            for i, row in enumerate(rows):
                seen = torch.tensor(row.prompt_ids + row.tokens, device=self.device)
                picked = scores[i].gather(0, seen)
                penalised = torch.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
                scores[i].scatter_(0, seen, penalised)
        early = [i for i, row in enumerate(rows) if len(row.tokens) < row.request.min_tokens]
        if early:
            scores[torch.tensor(early, device=self.device)[:, None], self.eos[None, :]] = float("-inf")
        if self.suppressed is not None:
            scores[:, self.suppressed] = float("-inf")
        logprobs = [None] * len(rows)
        wanted = [i for i, row in enumerate(rows) if row.logprobs is not None]
        if wanted:
            for i, values in zip(wanted, torch.log_softmax(scores[wanted], dim=-1).cpu(), strict=True):
                logprobs[i] = values
        tokens = scores.argmax(dim=-1).tolist()  # the greedy rows' tokens
        sampled = [i for i, row in enumerate(rows) if not row.request.greedy]
        if not sampled:
            return tokens, logprobs
        chosen = scores[sampled] / torch.tensor([[rows[i].request.temperature] for i in sampled], device=self.device)
        if self.top_k:
            kth = torch.topk(chosen, min(self.top_k, chosen.shape[-1]))[0][..., -1, None]
            chosen = chosen.masked_fill(chosen < kth, float("-inf"))
        # TopPLogitsWarper's arithmetic with a threshold per row (1 - top_p computed as it does, in Python);
        # a row with top_p = 1 is left alone, as generate() adds no warper for it.
        top_p = [rows[i].request.top_p for i in sampled]
        if any(p < 1 for p in top_p):
            ordered, order = torch.sort(chosen, descending=False)
            thresholds = torch.tensor([[1 - p] for p in top_p], device=self.device)
            remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= thresholds
            remove[..., -1:] = False
            remove &= torch.tensor([[p < 1] for p in top_p], device=self.device)
            chosen = chosen.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        probabilities = chosen.softmax(dim=-1)
        unseeded = [j for j, i in enumerate(sampled) if rows[i].generator is None]
        if unseeded:
            drawn = torch.multinomial(probabilities[unseeded], 1).squeeze(1).tolist()
            for j, token in zip(unseeded, drawn, strict=True):
                tokens[sampled[j]] = token
        for j, i in enumerate(sampled):
            if rows[i].generator is not None:  # its own random numbers, whatever the batch draws
                tokens[i] = int(torch.multinomial(probabilities[j : j + 1], 1, generator=rows[i].generator))
        return tokens, logprobs

    # the batch's cache: rows join and leave ---------------------------------------------------------

    def _join(self, rows: list[GenerationRow], cache, mask) -> None:
        """Add the rows still generating, with their part of ``cache``, to the batch (left-padded to one width)."""
        torch = self.torch
        keep = [i for i, row in enumerate(rows) if not row.finished]
        if not keep:
            return
        if len(keep) < len(rows):
            cache.batch_select_indices(torch.tensor(keep, device=self.device))
            mask = mask[keep]
        rows = [rows[i] for i in keep]
        if self.cache is None:
            self.rows, self.cache, self.mask = rows, cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        ours, theirs = width - self.mask.shape[1], width - mask.shape[1]
        for layer, joining in zip(self.cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                a, b = getattr(layer, name), getattr(joining, name)
                setattr(layer, name, torch.cat([self._pad(a, ours), self._pad(b, theirs)], dim=0))
        self.mask = torch.cat([self._pad(self.mask, ours), self._pad(mask, theirs)], dim=0)
        self.rows = self.rows + rows

    def _pad(self, tensor, columns: int):
        """``tensor`` with ``columns`` of zeros on the left of its sequence dimension (a cache's third, a
        mask's second: between steps the mask has a column for each of the cache's positions)."""
        if columns <= 0:
            return tensor
        dim = 2 if tensor.dim() == 4 else 1
        shape = list(tensor.shape)
        shape[dim] = columns
        return self.torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    def _leave(self, indices: list[int]) -> None:
        """Remove rows from the batch; cut the columns that are padding for every row that stays."""
        torch = self.torch
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        self.rows = [self.rows[i] for i in keep]
        self.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        self.mask = self.mask[keep]
        padding = int(self.mask.argmax(dim=1).min())  # the first real column of the row padded least
        if padding:
            self.mask = self.mask[:, padding:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, padding:], layer.values[:, :, padding:]

    # one token of a row -----------------------------------------------------------------------------

    def _finish(self, row: GenerationRow) -> None:
        """Answer a row as soon as it has its last token."""
        row.finish_reason = row.finish_reason or "length"
        if row.finish_reason == "cancelled" or row.settled:
            return
        if not (row.request.stream or row.request.stop):
            row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        self._flush(row)
        row.resolve(row.answer())

    def _logprob(self, scores, token: int, top: int) -> TokenLogprob:
        entry = TokenLogprob(self.tokenizer.decode([token]), float(scores[token]))
        if top:
            values, ids = scores.topk(top)
            entry.top = [
                (self.tokenizer.decode([i]), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        return entry

    def _advance(self, row: GenerationRow, token: int, logprob: TokenLogprob | None) -> None:
        if token in self.eos_ids and len(row.tokens) >= row.request.min_tokens:
            row.finish_reason = "stop"  # (the end of text is not a token of the answer)
            return
        row.tokens.append(token)
        if logprob is not None:
            row.logprobs.append(logprob)
        if len(row.tokens) >= row.request.max_tokens:
            row.finish_reason = "length"
        if not (row.request.stream or row.request.stop):
            return  # decoded once, at the end (_finish): nothing reads the text before
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        for stop in row.request.stop:
            if (at := text.find(stop)) != -1:
                row.text, row.finish_reason = text[:at], "stop"
                self._flush(row)
                return
        row.text = text
        if row.finished or not text.endswith("\ufffd"):  # hold back half a multi-byte character
            self._flush(row)

    def _flush(self, row: GenerationRow) -> None:
        """Hand a streamed row's new text, tokens and log-probabilities to its stream."""
        if row.request.stream and (len(row.text) > row.sent or row.finished):
            logprobs = None
            if row.logprobs is not None:
                logprobs, row.logprobs_sent = row.logprobs[row.logprobs_sent :], len(row.logprobs)
            if len(row.text) > row.sent or logprobs:
                row.emit(CompletionOutput(0, row.text[row.sent :], row.tokens[row.tokens_sent :], logprobs))
            row.sent, row.tokens_sent = len(row.text), len(row.tokens)
