"""The transformers engine's batcher: one thread that shares the model between requests.

Requests with the same sampling settings form a group, generated together by one generate() of at
most batch_size rows. Groups take turns: after STEP_TOKENS tokens, a group that has more tokens left
than a waiting group needs pauses (its KV cache, tokens and random state kept) and goes to the back
of the round; so a short request never waits for a long one to finish, only for one step of it per
step of its own. A group alone, or among longer ones, runs to its end in one generate() (no step
overhead). Continuous batching (requests joining a running group) is the next step; until then a
group's rows are fixed when it starts.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import Counter, deque

from ..errors import APIError
from . import CompletionOutput, GenerationRequest, RequestOutput, TokenLogprob, one

log = logging.getLogger("llmapp.server")


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
        self.pending_logprob: TokenLogprob | None = None  # the current step's, until its token is taken
        self.finish_reason: str | None = None
        self.cancelled = threading.Event()
        self.settled = False  # answered (resolve): a row is answered once
        self.deltas: asyncio.Queue = asyncio.Queue()  # CompletionOutputs of a stream, then None
        self.done = loop.create_future()  # the whole answer (a RequestOutput), or the error
        # A cancelled row's error is read by nobody (its client left): marked seen, so asyncio does not
        # log "exception was never retrieved" for every client that leaves.
        self.done.add_done_callback(lambda done: done.cancelled() or done.exception())

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

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


class Group:
    """Rows with the same sampling settings generated together, resumable between steps."""

    def __init__(self, key: tuple):
        self.key = key  # the rows' sampling settings
        self.rows: list[GenerationRow] = []
        self.input_ids = self.attention = None  # the rows so far (prompts, left-padded, and new tokens)
        self.cache = None  # the model's KV cache, carried from one step to the next
        self.rng = None  # a seeded group's random state between its steps
        self.steps = 0  # tokens generated per row
        self.done = False

    @property
    def max_tokens(self) -> int:
        return max(row.request.max_tokens for row in self.rows)

    @property
    def left(self) -> int:
        """At most this many tokens to go (fewer when its rows end early)."""
        return 0 if all(row.finished for row in self.rows) else self.max_tokens - self.steps


class Batcher:
    """The generation loop over a loaded model (see the module's docstring)."""

    # How long the batcher waits for company once a request arrives (batch_size > 1). Clients that send
    # their next request when the last one returns need a few ms to do it; measured in bench/serving.py.
    WINDOW_S = 0.02
    # While other requests wait, a generation runs this many tokens, then lets the next group run one
    # step. Smaller is fairer but each step is one more generate() call (about 1 ms here); measured in
    # bench/fairness.py.
    STEP_TOKENS = 8

    def __init__(self, model, tokenizer, torch, device: str, batch_size: int, eos_ids: set, pad_id: int):
        self.model, self.tokenizer, self.torch, self.device = model, tokenizer, torch, device
        self.batch_size, self.eos_ids, self.pad_id = batch_size, eos_ids, pad_id
        self.queue: queue.Queue = queue.Queue()
        self.active: deque[Group] = deque()  # groups generating, in turn
        self.preempted = 0  # steps that ended early to let another group run
        self.batch_sizes: Counter = Counter()
        self.last_group_size = 1
        self.cancelled = 0
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, request: GenerationRequest, prompt_ids: list[int]) -> GenerationRow:
        row = GenerationRow(request, prompt_ids, asyncio.get_running_loop())
        self.queue.put(row)
        return row

    # the round of groups -------------------------------------------------------------------------

    def _take(self, row: GenerationRow) -> None:
        """Put an arrived request in a group with its sampling settings that has not started yet (room
        permitting), else in a new group at the back of the round."""
        if self._cancel_if_asked(row):  # timed out while queued
            return
        key = row.request.sampling_key()
        for group in self.active:
            if group.input_ids is None and group.key == key and len(group.rows) < self.batch_size:
                group.rows.append(row)
                return
        group = Group(key)
        group.rows.append(row)
        self.active.append(group)

    def _take_arrived(self) -> None:
        while True:
            try:
                self._take(self.queue.get_nowait())
            except queue.Empty:
                return

    def _gather(self, group: Group) -> None:
        """Before a group starts, wait (up to WINDOW_S) only for as many requests as the last group
        held: clients that got their answers tend to come back together, while a lone client is never
        kept waiting."""
        deadline = time.monotonic() + self.WINDOW_S
        while len(group.rows) < min(self.batch_size, self.last_group_size):
            try:
                row = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if row.request.sampling_key() == group.key and not self._cancel_if_asked(row):
                group.rows.append(row)
            else:
                self._take(row)
        self.last_group_size = len(group.rows)

    def _run(self) -> None:
        while True:
            if not self.active:
                self._take(self.queue.get())
                continue
            group = self.active.popleft()
            try:
                if group.input_ids is None:
                    self._gather(group)
                self._step(group)
            except Exception as e:  # noqa: BLE001 - one failed batch must not stop the server
                log.exception("generation failed for a batch of %d", len(group.rows))
                for row in group.rows:
                    row.resolve(APIError(500, f"Generation failed: {type(e).__name__}.", "server_error"))
                group.done = True
            self._take_arrived()  # newcomers go before the group just stepped
            if not group.done:
                self.active.append(group)

    def _should_pause(self, group: Group, generated: int) -> bool:
        """Whether a group that generated `generated` tokens in this step lets a waiting one run.

        It does for one that needs fewer tokens than it has left: no request waits behind another for
        more tokens than it generates itself, and each group keeps its turn in the round. One that
        needs as many or more waits until this one ends: equal requests (a closed loop of clients)
        are not cut into steps, and requests that come back together still form one batch.
        """
        self._take_arrived()
        for waiting in self.active:
            for row in waiting.rows:
                self._cancel_if_asked(row)  # a client that leaves while waiting is answered at once
        left = group.max_tokens - group.steps - generated
        return any(waiting.left and waiting.left < left for waiting in self.active)

    def _cancel_if_asked(self, row: GenerationRow) -> bool:
        """Stop a row whose client left or whose timeout fired; True when it is (now) cancelled."""
        if row.cancelled.is_set() and not row.finished:
            row.finish_reason = "cancelled"
            self.cancelled += 1
            log.info("generation cancelled after %d tokens", len(row.tokens))
            row.resolve(APIError(499, "The generation was cancelled."))
        return row.finish_reason == "cancelled"

    def _finish(self, row: GenerationRow) -> None:
        """Answer a row as soon as it has its last token, whatever the rest of its group still does."""
        row.finish_reason = row.finish_reason or "length"
        if row.finish_reason == "cancelled" or row.settled:
            return
        if not (row.request.stream or row.request.stop):
            row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        self._flush(row)
        row.resolve(row.answer())

    # one step of a group -------------------------------------------------------------------------

    def _rng_state(self):
        torch = self.torch
        return torch.get_rng_state(), torch.cuda.get_rng_state() if self.device == "cuda" else None

    def _set_rng_state(self, state) -> None:
        self.torch.set_rng_state(state[0])
        if state[1] is not None:
            self.torch.cuda.set_rng_state(state[1])

    def _start(self, group: Group) -> None:
        """A group's first step: its prompts, left-padded to one width."""
        torch, rows = self.torch, group.rows
        width = max(len(row.prompt_ids) for row in rows)
        group.input_ids = torch.tensor([[self.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        group.input_ids = group.input_ids.to(self.device)
        group.attention = (torch.arange(width) >= torch.tensor([[width - len(r.prompt_ids)] for r in rows])).long()
        group.attention = group.attention.to(self.device)
        self.batch_sizes[len(rows)] += 1
        log.debug("batch of %d request(s), prompt width %d", len(rows), width)

    def _step(self, group: Group) -> None:
        """Generate one step of a group: to its end, or until it pauses for a shorter one (_should_pause)."""
        torch = self.torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        batcher, rows = self, group.rows
        for row in rows:
            self._cancel_if_asked(row)  # while it waited for its turn
        if all(row.finished for row in rows):
            group.done = True
            return
        request = rows[0].request  # every row of a group has the same sampling settings
        if group.input_ids is None:
            self._start(group)
        wants_logprobs = [i for i, row in enumerate(rows) if row.logprobs is not None]

        class Scores(LogitsProcessor):
            """Keeps each step's log-probabilities for the rows that asked for them (changes nothing).

            It runs after the engine's token constraints and before temperature and top-p, so the
            numbers are the model's distribution over the tokens it may emit."""

            latest = None

            def __call__(self, input_ids, scores):
                self.latest = torch.log_softmax(scores[wants_logprobs].float(), dim=-1).cpu()
                return scores

        scores = Scores()

        class Streamer:
            """Receives each step's new tokens, one per row, and hands text to each request."""

            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate() first puts the prompt (and, resumed, the tokens so far)
                    self.prompt_seen = True
                    return
                for i, (row, token) in enumerate(zip(rows, value.reshape(-1).tolist(), strict=True)):
                    if not row.finished:
                        if row.logprobs is not None and scores.latest is not None:
                            row.pending_logprob = batcher._logprob(
                                scores.latest[wants_logprobs.index(i)], token, row.request.top_logprobs
                            )
                        batcher._advance(row, token)
                        if row.finished:
                            batcher._finish(row)

            def end(self):
                pass

        class RowsDone(StoppingCriteria):
            """Ends the rows that are done; ends the step (a pause), after STEP_TOKENS, for a shorter one."""

            tokens = 0
            paused = False

            def __call__(self, input_ids, scores, **kwargs):
                self.tokens += 1
                done = [batcher._cancel_if_asked(row) or row.finished for row in rows]
                if not all(done) and self.tokens >= batcher.STEP_TOKENS and batcher._should_pause(group, self.tokens):
                    self.paused = True
                    return torch.ones(len(rows), dtype=torch.bool, device=input_ids.device)
                return torch.tensor(done, device=input_ids.device)

        kwargs = {"do_sample": not request.greedy, "pad_token_id": self.pad_id}
        if not request.greedy:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
        # A seeded group draws from its own random state, kept across its pauses: the same tokens
        # alone or between other groups' steps, and other requests never draw from a seeded state.
        seeded = not request.greedy and request.seed is not None
        if seeded:
            outer = self._rng_state()
            if group.rng is None:
                torch.manual_seed(request.seed)
            else:
                self._set_rng_state(group.rng)
        stop = RowsDone()
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=group.input_ids,
                    attention_mask=group.attention,
                    cache=group.cache,
                    max_new_tokens=group.max_tokens - group.steps,
                    min_new_tokens=max(0, request.min_tokens - group.steps),
                    streamer=Streamer(),
                    stopping_criteria=StoppingCriteriaList([stop]),
                    logits_processor=LogitsProcessorList([scores] if wants_logprobs else []),
                    return_dict_in_generate=True,
                    **kwargs,
                )
        finally:
            if seeded:
                group.rng = self._rng_state()
                self._set_rng_state(outer)
        new = out.sequences.shape[1] - group.input_ids.shape[1]
        group.steps += new
        if stop.paused and not all(row.finished for row in rows):
            self.preempted += 1
            ones = group.attention.new_ones(len(rows), new)
            group.input_ids, group.attention = out.sequences, torch.cat([group.attention, ones], dim=1)
            group.cache = out.cache
            return
        for row in rows:  # generate() ended: max_tokens reached, or every row done
            self._finish(row)
        group.done = True

    # one token of a row ----------------------------------------------------------------------------

    def _logprob(self, scores, token: int, top: int) -> TokenLogprob:
        entry = TokenLogprob(self.tokenizer.decode([token]), float(scores[token]))
        if top:
            values, ids = scores.topk(top)
            entry.top = [
                (self.tokenizer.decode([i]), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        return entry

    def _advance(self, row: GenerationRow, token: int) -> None:
        if token in self.eos_ids and len(row.tokens) >= row.request.min_tokens:
            row.finish_reason = "stop"
            return
        row.tokens.append(token)
        if row.logprobs is not None and row.pending_logprob is not None:
            row.logprobs.append(row.pending_logprob)
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
