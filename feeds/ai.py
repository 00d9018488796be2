"""Chat completions streamed onto a topic, so every viewer of the panel sees the answer being written.

`POST /feeds/{topic}/prompt {"prompt": "..."}` queues a prompt (202, `{"completion": id}`); one
completion runs at a time per topic, the others wait in a bounded queue (429 when it is full).
`POST /feeds/{topic}/stop` stops the running one. Each completion publishes `prompt`, then `token`
events, then `done` (with usage, timings and cost) or `error` (`message`: what failed and whether to
retry, for the person who asked; `detail`: the relay's full account, for operators). It goes through
the server's relay: the same providers, keys, retries and timeouts as `/v1/chat/completions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import Event, Feed
from dashboard.ai import PAGE, Account, Completion, Measure, RelayError, serving
from dashboard.http import HTTPError, cross_site, read_json

log = logging.getLogger("dashboard.feeds.ai")


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: float = Field(gt=0, description="seconds between scheduled prompts (the first runs at start)")
    prompt: str = Field(min_length=1)


@dataclass
class Job:
    id: str
    prompt: str
    account: Account  # who the completion is charged to
    stopping: bool = False


class AI(Feed):
    """Chat completions from the AI relay, streamed token by token to the topic."""

    default_view = "chat"
    event_types = ("prompt", "token", "done", "error")

    class Options(Feed.Options):
        model: str = Field("simulated", description="a model one of ai.providers serves")
        system: str | None = Field(None, description="system message sent before each prompt")
        temperature: float | None = Field(None, ge=0, le=2)
        max_tokens: int | None = Field(None, ge=1)
        schedule: Schedule | None = None
        queue: int = Field(8, ge=0, le=1000, description="prompts that may wait while one runs")
        max_prompt: int = Field(32_000, ge=1, description="longest prompt accepted, in characters")
        page_prompts: bool = Field(
            True,
            description="when auth.api_tokens is set, still let the dashboard page prompt with the proof "
            "the server gave it (bound to its session cookie) instead of a token",
        )
        page_key: str | None = Field(
            None,
            description="the auth.api_keys entry (by name) that prompts with no viewer name are charged to; "
            "named viewers without a key of their own are charged under their name with its limits",
        )

    @classmethod
    def config_problems(cls, options: Options, config: Any) -> list[str]:
        problems = []
        if not serving(config.ai.providers, options.model):
            models = sorted({m for p in config.ai.providers for m in p.models}) or ["none"]
            served = ", ".join(models)
            problems.append(
                f"no provider in ai.providers serves model {options.model!r} (they serve: {served})"
            )
        names = [key.name for key in config.auth.api_keys]
        if options.page_key is not None and options.page_key not in names:
            problems.append(
                f"page_key {options.page_key!r} is not the name of one of auth.api_keys "
                f"({', '.join(names) or 'none configured'})"
            )
        return problems

    def __init__(self, topic: str, options: Any = None) -> None:
        super().__init__(topic, options)
        self._queue: asyncio.Queue[Job] | None = None
        self._running: Job | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None  # started by the first prompt; ends in aclose()

    @property
    def queue(self) -> asyncio.Queue[Job]:
        if self._queue is None:
            # maxsize 0 would mean unbounded to asyncio; `queue: 0` means no waiting at all.
            self._queue = asyncio.Queue(maxsize=max(1, self.options.queue))
        return self._queue

    # -- scheduled prompts: on the instance that leads this topic --------------------------------
    async def stream(self):
        """Scheduled prompts, when configured. Prompts from the routes do not wait for this: with
        several instances, each runs the prompts it accepted (see `_work`)."""
        schedule = self.options.schedule
        if schedule is None:
            await asyncio.Event().wait()  # nothing to do until the server stops
        while True:
            if not self._enqueue(schedule.prompt):
                log.warning("topic %r: scheduled prompt skipped, the queue is full", self.topic)
            await asyncio.sleep(schedule.every)
        yield  # never reached: this feed publishes from its worker

    # -- the worker: runs the prompts this instance accepted, one at a time ----------------------
    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            self._running = job
            self._task = asyncio.create_task(self._complete(job), name=f"ai:{self.topic}:{job.id}")
            try:
                await self._task  # a stop ends it early; cancelling the worker cancels it too
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:
                log.exception("topic %r: completion %s failed", self.topic, job.id)
            finally:
                self._running = None
                self._task = None

    async def aclose(self) -> None:
        if self._worker is not None:
            await self.context.tasks.cancel(self._worker)

    def _enqueue(self, prompt: str, account: Account | None = None) -> Job | None:
        if self.options.queue == 0 and (self._running is not None or not self.queue.empty()):
            return None
        job = Job(id=f"cmpl-{uuid.uuid4().hex[:12]}", prompt=prompt, account=account or self._page_account())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            return None
        if self._worker is None or self._worker.done():
            # A task of its own: what it publishes is not fenced by the topic's lease (the server
            # fences only the feed's own task), so a prompt this instance took is its to finish.
            self._worker = self.context.tasks.start(self._work(), name=f"ai:{self.topic}:worker")
        return job

    def _request(self, prompt: str) -> dict[str, Any]:
        options = self.options
        messages = [{"role": "user", "content": prompt}]
        if options.system:
            messages.insert(0, {"role": "system", "content": options.system})
        body: dict[str, Any] = {"model": options.model, "messages": messages, "stream": True}
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.max_tokens is not None:
            body["max_tokens"] = options.max_tokens
        return body

    async def _complete(self, job: Job) -> None:
        measure = Measure(model=self.options.model)
        completion: Completion | None = None
        try:
            prompt = {
                "completion": job.id,
                "prompt": job.prompt,
                "model": self.options.model,
                "ts": time.time(),
            }
            await self.publish(Event(prompt, event="prompt"))
            try:
                completion = await self.context.completions.admit(
                    job.account, self._request(job.prompt), measure
                )
            except HTTPError as exc:
                log.info("topic %r: completion %s refused: %s", self.topic, job.id, exc.message)
                await self.publish(
                    Event({"completion": job.id, "code": exc.code, "message": exc.message}, "error")
                )
                return
            async with completion:  # settled, measured and logged however this ends
                try:
                    upstream = await completion.open_stream()
                    async for batch in upstream.batches():
                        text = "".join(chunk.text for chunk in batch)
                        if text:
                            await self.publish(Event({"completion": job.id, "text": text}, event="token"))
                            upstream.handed_on(batch)
                except asyncio.CancelledError:
                    if not job.stopping:
                        raise
                    completion.stopped()
        except RelayError as exc:
            log.warning("topic %r: completion %s failed: %s", self.topic, job.id, exc.message)
            # The panel shows `message` to whoever prompted; `detail` (providers, statuses) is for
            # operators reading the topic's events, as in the log line above.
            error = {"completion": job.id, "code": exc.code, "message": exc.summary, "detail": exc.message}
            await self.publish(Event(error, "error"))
            return
        except asyncio.CancelledError:
            if not job.stopping:
                raise
        summary = completion.summary() if completion is not None else measure.summary()
        if job.stopping:
            summary["finish_reason"] = None
        await self.publish(Event({"completion": job.id, "stopped": job.stopping, **summary}, event="done"))

    # -- routes ----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("/prompt", self.prompt_endpoint, methods=["POST"]),
            Route("/stop", self.stop_endpoint, methods=["POST"]),
        ]

    async def prompt_endpoint(self, request: Request) -> JSONResponse:
        """POST /feeds/{topic}/prompt {"prompt": "..."} -> 202 {"completion": id}"""
        account = self._check_access(request)
        body = await read_json(request, min(self.context.config.server.max_body, 1 << 20))
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise HTTPError(400, 'send {"prompt": "..."} with a non-empty string', "invalid_request")
        if len(prompt) > self.options.max_prompt:
            raise HTTPError(413, f"the prompt is over {self.options.max_prompt} characters")
        job = self._enqueue(prompt, account)
        if job is None:
            raise HTTPError(
                429,
                f"topic {self.topic!r} already has {self.queue.qsize()} prompt(s) waiting behind the running "
                f"one (the limit is options.queue = {self.options.queue}); wait for one to finish, "
                f"or POST /feeds/{self.topic}/stop",
                "queue_full",
                headers={"Retry-After": "1"},
            )
        return JSONResponse({"completion": job.id}, status_code=202)

    async def stop_endpoint(self, request: Request) -> JSONResponse:
        """POST /feeds/{topic}/stop -> 200 {"stopped": id | null}"""
        self._check_access(request)
        job, task = self._running, self._task
        if job is None or task is None or task.done():
            return JSONResponse({"stopped": None})
        job.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # the done event is out when we answer
        return JSONResponse({"stopped": job.id})

    def _check_access(self, request: Request) -> Account:
        """Another site's page: never. An api token: always. Otherwise the viewer must be allowed
        the topic and, with api tokens set, the request must carry the proof the server gave the
        page (bound to the page's session cookie), unless page_prompts is off. The account the
        prompt is charged to: the token's key, else the viewer's name, else the page key."""
        access = self.context.access
        if cross_site(request):
            raise HTTPError(403, "prompts from another site's page are refused", "cross_origin")
        token = access.api_token(request)
        if token is not None:
            return self.context.completions.charged_to(token)
        viewer = access.require(request, [self.topic])
        if access.api_tokens and not (self.options.page_prompts and access.has_prompt_proof(request)):
            access.require_api_token(request, f"prompting topic {self.topic!r}")
        if viewer.name:
            return self.context.keys.for_name(viewer.name, self.options.page_key)
        return self._page_account()

    def _page_account(self) -> Account:
        """Prompts with no viewer name (and scheduled ones): the page key, else no limits."""
        if self.options.page_key is None:
            return Account(PAGE)
        return self.context.keys.for_name(self.options.page_key, None)
