#!/usr/bin/env python3
"""Checks that the modules of a Rust crate have no import cycles.

Usage: scripts/check-layers.py [SRC_DIR ...]   (default: node-server/src)

For every module (a file; `foo/mod.rs` is module `foo`) it collects the `crate::` paths the
module names outside its unit tests, and builds two graphs:
  - between top-level modules (a folder counts as one: its layer), and
  - between the modules inside each folder.
A cycle in either is printed with the references that close it, and the check fails.
Test-only code (`#[cfg(test)]` items at the end of a file, and modules only compiled for
tests) is left out: tests may use anything.
"""
import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


def strip_tests(text):
    # Unit tests live in a `#[cfg(test)] mod ... { }` at the end of the file (house style).
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+" + IDENT + r"\s*\{", text)
    return text[: m.start()] if m else text


def test_only_modules(text):
    """Names of `#[cfg(test)] mod name;` declarations."""
    return set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\(crate\))?\s+)?mod\s+(" + IDENT + r")\s*;", text))


def group_items(body):
    """Top-level items of a `{a::b, c, d::{e, f}}` group: their first path segment."""
    out = []
    for it in split_top(body):
        m = re.match(r"\s*(" + IDENT + ")", it)
        if m and m.group(1) != "self":
            out.append(m.group(1))
    return out


def crate_refs(text):
    """(first, second) path segments after every `crate::`."""
    refs = []
    for m in re.finditer(r"\bcrate::", text):
        rest = text[m.end():]
        if rest.startswith("{"):
            depth, end = 0, 0
            for i, ch in enumerate(rest):
                depth += ch == "{"
                depth -= ch == "}"
                if depth == 0:
                    end = i
                    break
            body = rest[1:end]
            # Inside a group, `a::b` gives (a, b); `a::{b, c}` gives (a, b) and (a, c).
            for item in split_top(body):
                refs.extend(paths_of(item))
        else:
            refs.extend(paths_of(rest[:200]))
    return refs


def split_top(body):
    items, depth, cur = [], 0, ""
    for ch in body:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items if i.strip()]


def paths_of(item):
    m = re.match(r"(" + IDENT + r")(?:::(" + IDENT + r"|\{))?", item)
    if not m:
        return []
    first, second = m.group(1), m.group(2)
    if second == "{":
        inner = item[item.index("{") + 1: item.rindex("}")] if "}" in item else ""
        return [(first, s) for s in group_items(inner)] or [(first, None)]
    return [(first, second)]


def modules(src):
    """{module path tuple: file text} for the crate rooted at src (lib.rs)."""
    mods, test_only = {}, set()
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                rel = []
            with open(path, encoding="utf-8") as fh:
                raw = fh.read()
            parent = tuple(rel)
            test_only |= {parent + (n,) for n in test_only_modules(raw)}
            mods[tuple(rel)] = strip_tests(strip_comments(raw))
    return {m: t for m, t in mods.items() if not any(m[: len(t_)] == t_ for t_ in test_only)}


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check(src):
    mods = modules(src)
    names = {m for m in mods if m}
    tops = {m[0] for m in names}
    top_graph, inner = defaultdict(set), defaultdict(lambda: defaultdict(set))
    why = defaultdict(list)
    for m, text in mods.items():
        if not m:
            continue
        for first, second in crate_refs(text):
            if first not in tops:
                continue
            if first != m[0]:
                top_graph[m[0]].add(first)
                why[(m[0], first)].append("::".join(m))
            elif len(m) >= 2 and second and (m[0], second) in names and second != m[1]:
                inner[m[0]][m[1]].add(second)
                why[(m[0] + "/" + m[1], m[0] + "/" + second)].append("::".join(m))
        # `super::x` inside a folder names a sibling.
        if len(m) >= 2:
            for s in re.findall(r"\bsuper::(" + IDENT + ")", text):
                if (m[0], s) in names and s != m[1]:
                    inner[m[0]][m[1]].add(s)
                    why[(m[0] + "/" + m[1], m[0] + "/" + s)].append("::".join(m))
    bad = 0
    for comp in cycles(top_graph):
        bad += 1
        print(f"{src}: import cycle between top-level modules: {' '.join(comp)}")
        for a in comp:
            for b in sorted(top_graph[a] & set(comp)):
                print(f"    {a} -> {b}  (in {', '.join(sorted(set(why[(a, b)])))})")
    for folder, g in sorted(inner.items()):
        for comp in cycles(g):
            bad += 1
            print(f"{src}: import cycle inside {folder}/: {' '.join(comp)}")
            for a in comp:
                for b in sorted(g[a] & set(comp)):
                    print(f"    {a} -> {b}")
    layers = sorted(t for t in tops if any(len(m) > 1 and m[0] == t for m in names))
    print(f"{src}: {len(names)} modules, {len(tops)} top-level ({len(layers)} folders: "
          f"{' '.join(layers) or '-'}), {bad} cycle(s)")
    return bad == 0


def main():
    srcs = sys.argv[1:] or ["node-server/src"]
    ok = all([check(s) for s in srcs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
