"""Client side of tests/e2e/serve.sh: drives owl's server with the real
`openai` client. Each subcommand prints "PASS name" / "FAIL name: why" lines.

  serve_client.py basic URL [--key KEY] [--adapter NAME]
  serve_client.py greedy URL --kind completions|chat --prompt P --max-tokens N [--model M]
  serve_client.py concurrent URL --clients N
  serve_client.py swap URL --rev-file F --model1 DIR --model2 DIR --seconds S
  serve_client.py denied URL [--key KEY]
"""
import argparse
import concurrent.futures as cf
import os
import sys
import threading
import time

import openai


def report(name, ok, why=""):
    print(f"PASS {name}" if ok else f"FAIL {name}: {why}", flush=True)
    return ok


def client(url, key=None):
    # max_retries=0: a 429 or 503 must show, not be retried away.
    return openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0, timeout=120)


def complete(c, model, prompt, max_tokens, stream=False, **kw):
    """Text, finish reason, usage and the fingerprints of every part of one completion."""
    if not stream:
        r = c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)
        return r.choices[0].text, r.choices[0].finish_reason, r.usage, {r.system_fingerprint}
    text, finish, usage, fps = "", None, None, set()
    for ch in c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                   stream=True, stream_options={"include_usage": True}, **kw):
        fps.add(ch.system_fingerprint)
        if ch.usage:
            usage = ch.usage
        for choice in ch.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    return text, finish, usage, fps


def chat(c, model, content, max_tokens, stream=False, **kw):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}]
    if not stream:
        r = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage, {r.system_fingerprint}
    text, finish, usage, fps = "", None, None, set()
    for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                        stream=True, stream_options={"include_usage": True}, **kw):
        fps.add(ch.system_fingerprint)
        if ch.usage:
            usage = ch.usage
        for choice in ch.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, usage, fps


def basic(a):
    c = client(a.url, a.key)
    models = c.models.list()
    ids = [m.id for m in models.data]
    report("models_lists_the_deployment", "fixture" in ids, f"ids {ids}")
    if a.adapter:
        report("models_lists_the_adapter", a.adapter in ids, f"ids {ids}")
        one = c.models.retrieve(a.adapter)
        report("models_retrieve_one", one.id == a.adapter and getattr(one, "parent", None) == "fixture",
               f"{one}")
    text, finish, usage, _ = complete(c, "fixture", "The sky is", 12)
    report("completion_answers", isinstance(text, str) and finish in ("stop", "length"),
           f"text {text!r} finish {finish}")
    report("completion_usage_counts", usage.completion_tokens <= 12 and usage.prompt_tokens > 0 and
           usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"usage {usage}")
    stext, sfinish, susage, _ = complete(c, "fixture", "The sky is", 12, stream=True)
    report("completion_stream_equals_whole", stext == text and sfinish == finish,
           f"{stext!r}/{sfinish} vs {text!r}/{finish}")
    report("completion_stream_usage", susage is not None and susage.completion_tokens == usage.completion_tokens
           and susage.prompt_tokens == usage.prompt_tokens, f"usage {susage} vs {usage}")
    ctext, cfinish, cusage, _ = chat(c, "fixture", "Hello there", 10)
    sctext, scfinish, scusage, _ = chat(c, "fixture", "Hello there", 10, stream=True)
    report("chat_answers", cusage.completion_tokens <= 10 and cfinish in ("stop", "length"),
           f"usage {cusage}")
    report("chat_stream_equals_whole", sctext == ctext and scfinish == cfinish and scusage is not None
           and scusage.completion_tokens == cusage.completion_tokens, f"{sctext!r} vs {ctext!r}")
    # max_tokens 1 and a stop string: both end the generation as asked.
    one = c.completions.create(model="fixture", prompt="The sky is", max_tokens=1, temperature=0)
    report("max_tokens_one", one.usage.completion_tokens <= 1 and one.choices[0].finish_reason in ("length", "stop"),
           f"{one.usage} {one.choices[0].finish_reason}")
    # A stop string from the text itself, in plain ASCII (the fixture's text
    # holds bytes that are not UTF-8 and arrive as U+FFFD).
    stop = next((text[i:i + 2] for i in range(1, len(text) - 1)
                 if text[i:i + 2].isascii() and text[i:i + 2].isalnum()), None)
    if stop:
        st = c.completions.create(model="fixture", prompt="The sky is", max_tokens=12, temperature=0, stop=[stop])
        report("stop_string_ends_text", st.choices[0].finish_reason == "stop" and stop not in st.choices[0].text
               and text.startswith(st.choices[0].text), f"stop {stop!r}: {st.choices[0].text!r} "
               f"{st.choices[0].finish_reason}")
    # Seeded sampling: the same seed gives the same text.
    s1 = c.completions.create(model="fixture", prompt="Once", max_tokens=10, temperature=0.9, seed=7)
    s2 = c.completions.create(model="fixture", prompt="Once", max_tokens=10, temperature=0.9, seed=7)
    report("seed_repeats", s1.choices[0].text == s2.choices[0].text, f"{s1.choices[0].text!r} vs {s2.choices[0].text!r}")
    # Logprobs: the greedy token is the top alternative, probabilities <= 1.
    lp = c.chat.completions.create(model="fixture", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                   temperature=0, logprobs=True, top_logprobs=3)
    content = lp.choices[0].logprobs.content
    ok = len(content) == lp.usage.completion_tokens and all(
        len(t.top_logprobs) == 3 and t.logprob <= 0 and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6
        for t in content)
    report("chat_logprobs", ok, f"{content}")
    clp = c.completions.create(model="fixture", prompt="Hi", max_tokens=4, temperature=0, logprobs=2)
    l = clp.choices[0].logprobs
    report("completion_logprobs", len(l.tokens) == clp.usage.completion_tokens and len(l.top_logprobs[0]) >= 1
           and all(x <= 0 for x in l.token_logprobs), f"{l}")
    pen = c.completions.create(model="fixture", prompt="The sky is", max_tokens=12, temperature=0,
                               frequency_penalty=2.0, presence_penalty=1.0)
    report("penalties_accepted", pen.usage.completion_tokens >= 1, f"{pen.usage}")
    if a.adapter:
        at, _, _, _ = complete(c, a.adapter, "The sky is", 12)
        report("adapter_by_name_differs_from_base", at != text, f"adapter text {at!r} equals base {text!r}")


def greedy(a):
    """Prints the text one request gets (the reference for equality checks)."""
    c = client(a.url, a.key)
    if a.kind == "chat":
        text, _, _, _ = chat(c, a.model, a.prompt, a.max_tokens)
    else:
        text, _, _, _ = complete(c, a.model, a.prompt, a.max_tokens)
    sys.stdout.write(text)


PROMPTS = [
    "The sky is",
    "Once upon a time",
    "x",
    "A long shared prefix that spans more than one block of the cache so that prefix caching "
    "has whole blocks to reuse across requests: first",
    "A long shared prefix that spans more than one block of the cache so that prefix caching "
    "has whole blocks to reuse across requests: second",
    "Hello world",
    "1 2 3 4 5 6",
    "Tell me about owls",
]


def concurrent(a):
    c = client(a.url)
    alone = {}
    for i, p in enumerate(PROMPTS):
        kind = "chat" if i % 2 else "completions"
        alone[i] = (chat if kind == "chat" else complete)(c, "fixture", p, 24, stream=True)[0]
    start = threading.Barrier(a.clients)

    def one(k):
        i = k % len(PROMPTS)
        cc = client(a.url)
        start.wait()
        fn = chat if i % 2 else complete
        t0 = time.time()
        text, finish, usage, _ = fn(cc, "fixture", PROMPTS[i], 24, stream=True)
        return k, i, text, usage, time.time() - t0

    with cf.ThreadPoolExecutor(a.clients) as ex:
        results = list(ex.map(one, range(a.clients)))
    bad = [(k, i, t, alone[i]) for k, i, t, _, _ in results if t != alone[i]]
    report(f"concurrent_{a.clients}_streams_equal_alone", not bad and len(results) == a.clients,
           f"{len(bad)} of {len(results)} differ, e.g. {bad[:1]}")
    report(f"concurrent_{a.clients}_usage", all(u is not None and u.completion_tokens > 0 for _, _, _, u, _ in results),
           "a stream had no usage")


def swap(a):
    """Clients stream without pause while the revision file flips between two
    models; every response must come whole from one revision (one
    fingerprint, the text that revision gives alone) and none may fail."""
    c = client(a.url)
    prompt = "Swap me"
    refs = {}

    def write_rev(n, model):
        tmp = a.rev_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{n} {model}\n")
        os.replace(tmp, a.rev_file)

    # Each revision's text alone, with the server on it.
    for n, model in ((1, a.model1), (2, a.model2), (1, a.model1)):
        write_rev(n, model)
        deadline = time.time() + 30
        while time.time() < deadline:
            t, _, _, fps = complete(c, "fixture", prompt, 16, stream=True)
            if fps == {f"owl-rev-{n}"}:
                refs[n] = t
                break
            time.sleep(0.2)
    if not report("swap_both_revisions_served", set(refs) == {1, 2} and refs[1] != refs[2],
                  f"references {refs}"):
        return
    stop = time.time() + a.seconds
    errors, wrong, served = [], [], {1: 0, 2: 0}
    lock = threading.Lock()

    def loop(k):
        cc = client(a.url)
        while time.time() < stop:
            try:
                t, finish, usage, fps = complete(cc, "fixture", prompt, 16, stream=True)
            except Exception as e:  # any failure is a lost request
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                if len(fps) != 1:
                    wrong.append(f"fingerprints {fps}")
                    continue
                n = int(next(iter(fps)).rsplit("-", 1)[1])
                served[n] += 1
                if t != refs.get(n):
                    wrong.append(f"revision {n} gave {t!r}, alone {refs.get(n)!r}")

    flips = []
    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(loop, k) for k in range(8)]
        n = 1
        while time.time() < stop - 0.5:
            time.sleep(0.4)
            n = 3 - n
            t0 = time.time()
            write_rev(n, a.model1 if n == 1 else a.model2)
            # Until the server answers from the new revision.
            while time.time() - t0 < 10:
                fps = complete(c, "fixture", prompt, 1)[3]
                if fps == {f"owl-rev-{n}"}:
                    break
                time.sleep(0.02)
            flips.append(time.time() - t0)
        for f in futs:
            f.result()
    report("swap_under_load_loses_no_request", not errors, f"{len(errors)} failed: {errors[:3]}")
    report("swap_under_load_whole_responses", not wrong, f"{len(wrong)} wrong: {wrong[:3]}")
    report("swap_under_load_both_served", served[1] > 0 and served[2] > 0 and len(flips) >= 2, f"served {served}")
    # The revision file is polled twice a second; a revision still in memory
    # then takes over at once (the bound leaves room for a loaded machine).
    report("swap_rollback_fast", flips and max(flips) < 1.5, f"swap times {flips}")
    print(f"swap: {sum(served.values())} requests, flips took {['%.2f' % x for x in flips]} s", file=sys.stderr)


def denied(a):
    c = client(a.url, a.key)
    try:
        c.completions.create(model="fixture", prompt="x", max_tokens=2)
        report("auth_refuses" + ("_wrong_key" if a.key else "_no_key"), False, "the request passed")
    except openai.AuthenticationError as e:
        body = e.body or {}
        report("auth_refuses" + ("_wrong_key" if a.key else "_no_key"), e.status_code == 401 and
               body.get("code") == "invalid_api_key", f"status {e.status_code} body {body}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("basic", "greedy", "concurrent", "swap", "denied"):
        s = sub.add_parser(name)
        s.add_argument("url")
        s.add_argument("--key")
        s.add_argument("--adapter")
        s.add_argument("--kind", default="completions")
        s.add_argument("--prompt", default="")
        s.add_argument("--model", default="fixture")
        s.add_argument("--max-tokens", type=int, default=16)
        s.add_argument("--clients", type=int, default=32)
        s.add_argument("--rev-file")
        s.add_argument("--model1")
        s.add_argument("--model2")
        s.add_argument("--seconds", type=float, default=5)
    a = p.parse_args()
    globals()[a.cmd](a)


if __name__ == "__main__":
    main()
