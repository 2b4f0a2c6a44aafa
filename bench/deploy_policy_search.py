"""Benchmark (a computation, no fleet): how far the dag policy is from its bound, and how far any schedule can be.

    .venv/bin/python bench/deploy_policy_search.py [--overhead 2.47] [--per-component 0.17] [--moves 200000]
        [--seed 1] [--hosts 6]

The steps of bench/deploy_makespan.py (the example's 34 components in 6 groups; host i
plays example host i mod 6: with the timing model every copy of a role is the same,
so 6 hosts give the ratios of 60 and 300), each Puppet run costing ``--overhead``
seconds plus ``--per-component`` seconds a component, nothing else (no execution).
Printed, each as a makespan and over the dag bound of bench/deploy_makespan.py:

- dag as deploy_tasks runs it: one run per host and group, started when the
  dependencies of that group's steps on the host have ended (the "no-overhead"
  column of deploy_makespan.py);
- greedy, the issue's wording read literally: whenever a host is free, one run
  with every step of it whose dependencies have all ended, of any group;
- the best schedule a local search finds (simulated annealing over every host's
  runs: which steps ride which run, in which order), printed with its runs:
  what the bound leaves to any policy at all, including ones that hold a step
  back from a run it could join (which "starts each step as soon as its
  dependencies are done" rules out).

The baseline is the bound itself (1.00); the search is seeded, so a run repeats.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def simulate(sched, by, hosts, o: float, c: float):
    """The makespan of ``sched`` (host -> its runs in order, each a list of step ids), or None when a run
    waits for a later run of its own host (or for a step of its own run)."""
    end, idx, free = {}, {h: 0 for h in hosts}, {h: 0.0 for h in hosts}
    progress = True
    while progress:
        progress = False
        for h in hosts:
            while idx[h] < len(sched[h]):
                run = sched[h][idx[h]]
                deps = [d for sid in run for d in by[sid].depends_on if d in by]
                if any(d in run for d in deps):
                    return None
                if any(d not in end for d in deps):
                    break
                finish = max([free[h]] + [end[d] for d in deps]) + o + c * len(run)
                free[h] = finish
                for sid in run:
                    end[sid] = finish
                idx[h] += 1
                progress = True
    return max(end.values()) if len(end) == len(by) else None


def greedy(steps, by, hosts, o: float, c: float) -> float:
    """Whenever a host is free: one run with every step of it whose dependencies have all ended."""
    end, free, left, t = {}, {h: 0.0 for h in hosts}, {s.id for s in steps}, 0.0
    running = []  # (finish, host, ids)
    while left or running:
        started = False
        for h in hosts:
            if free[h] > t:
                continue
            batch = [s.id for s in steps if s.id in left and s.host == h
                     and all(d in end and end[d] <= t for d in s.depends_on if d in by)]
            if batch:
                free[h] = t + o + c * len(batch)
                running.append((free[h], h, batch))
                left -= set(batch)
                started = True
        if not started:  # the next moment runs end: every run ending then, before any host starts again
            t = max(t, min(r[0] for r in running))
            for finish, _, batch in [r for r in running if r[0] <= t]:
                for sid in batch:
                    end[sid] = finish
            running = [r for r in running if r[0] > t]
    return max(end.values())


def search(sched, by, hosts, o, c, moves: int, rng) -> tuple:
    cur = best = simulate(sched, by, hosts, o, c)
    best_sched, temp = copy.deepcopy(sched), 0.3
    for _ in range(moves):
        new = {h: [list(r) for r in runs] for h, runs in sched.items()}
        h = rng.choice(hosts)
        runs = new[h]
        move = rng.random()
        if move < 0.4:  # a step to another run of its host, or to a new run of its own
            i = rng.randrange(len(runs))
            sid = runs[i].pop(rng.randrange(len(runs[i])))
            j = rng.randrange(len(runs) + 1)
            if j == len(runs) or rng.random() < 0.2:
                runs.insert(j, [sid])
            else:
                runs[j].append(sid)
        elif move < 0.7 and len(runs) >= 2:  # two neighbouring runs made one
            i = rng.randrange(len(runs) - 1)
            runs[i] += runs.pop(i + 1)
        elif len(runs) >= 2:  # two neighbouring runs swapped
            i = rng.randrange(len(runs) - 1)
            runs[i], runs[i + 1] = runs[i + 1], runs[i]
        new[h] = [r for r in runs if r]
        value = simulate(new, by, hosts, o, c)
        if value is not None and (value <= cur or rng.random() < math.exp(-(value - cur) / temp)):
            sched, cur = new, value
            if value < best:
                best, best_sched = value, copy.deepcopy(new)
        temp = max(0.01, temp * 0.99997)
    return best, best_sched


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--overhead", type=float, default=2.47, help="seconds a Puppet run (deploy_makespan.py's default)")
    p.add_argument("--per-component", type=float, default=0.17, help="seconds a component in a run")
    p.add_argument("--moves", type=int, default=200_000, help="local-search moves (default 200,000: ~10 s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hosts", type=int, default=6, help="hosts (each plays example host i mod 6)")
    args = p.parse_args()
    if args.moves < 0 or args.hosts < 1:
        p.error("--moves: 0 or more; --hosts: at least 1")
    from deploy_makespan import bounds, replay, steps_for

    o, c = args.overhead, args.per_component
    steps, plan = steps_for(args.hosts)
    by = {s.id: s for s in steps}
    hosts = sorted({s.host for s in steps})
    _, bound = bounds(steps, plan, o, c)
    policy = {h: [] for h in hosts}
    for g in sorted({s.group for s in steps}):
        for h in hosts:
            run = [s.id for s in steps if s.host == h and s.group == g]
            if run:
                policy[h].append(run)
    rows = [("dag bound (no schedule beats it)", bound),
            ("dag as deploy_tasks runs it (one run a host and group)", replay(steps, o, c, "dag")),
            ("greedy: a free host runs all its ready steps, any group", greedy(steps, by, hosts, o, c))]
    best, best_sched = search(policy, by, hosts, o, c, args.moves, random.Random(args.seed))
    rows.append((f"best found by local search ({args.moves:,} moves, seed {args.seed})", best))
    print(f"{args.hosts} hosts, {len(steps)} steps; a run {o:g} s + {c:g} s a component; no execution at all")
    for label, value in rows:
        print(f"  {label:<62} {value:7.2f}s  {value / bound:5.3f}x the bound")
    print("  the best schedule found (each host's runs in order):")
    for h in hosts:
        print(f"    {h}: " + " | ".join(",".join(by[sid].component for sid in run) for run in best_sched[h]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
