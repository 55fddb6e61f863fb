"""Throughput benchmarks without Ray: the pieces the `alignuser-sim bench ...` commands put together.

- `fake_server`: a fast fake OpenAI-compatible server standing in for a GPU vLLM server, answering page
  decisions like the scripted user of `fake_users`;
- `naive`: the baseline, Agent4Rec's thread pool making one blocking call per agent-page;
- `vllm_bench`: vLLM's own serving benchmark against a live server;
- `sampler`: CPU time and memory of the processes measured, from /proc;
- `results`: the machine, Markdown tables, JSON + Markdown files and the scaling plot;
- `pages`: synthetic page-decision prompts for LLM benchmarks (`benchmarks/bench_llm.py`).

The Ray side (the simulation runs themselves, measured from outside) is `actors/bench.py`; the commands
are `cli/bench.py`; what the numbers mean is in docs/scale.md.
"""
