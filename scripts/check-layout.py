#!/usr/bin/env python3
"""The layout rules `./dev test` holds the code to (ARCHITECTURE.md):

- no two files of a crate import each other, directly or around a loop (`use crate::…`,
  `crate::…` paths and `super::…` count; comments and tests do not; a parent module
  declaring and re-exporting its children is the module tree, not an import);
- no file of ingest is over 420 lines: its steps stay readable one file each.

Usage: scripts/check-layout.py (from the repository root). Exits 1 naming what breaks a rule.
"""
import os, re, sys
from collections import defaultdict
def modules(src):
    files={}
    for root,_,fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            path=os.path.join(root,f); rel=os.path.relpath(path,src)[:-3]
            parts=rel.split('/')
            if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
            files['::'.join(parts)]=path
    return files
def deps(src):
    files=modules(src); g=defaultdict(set)
    for mod,path in files.items():
        text=open(path).read()
        text=re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*','',text,flags=re.S)
        text='\n'.join(l for l in text.split('\n') if not l.lstrip().startswith('//'))
        here=mod.split('::') if mod else []
        refs=set()
        for m in re.finditer(r'crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)',text):
            refs.add(m.group(1))
        for m in re.finditer(r'use crate::\{([^}]*)\}',text):
            for item in m.group(1).split(','):
                item=item.strip().split('::')[0].strip()
                if item and item[0].islower(): refs.add(item)
        for m in re.finditer(r'\bsuper::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*|\{[^}]*\})',text):
            base='::'.join(here[:-1]) if (os.path.basename(path) not in ('mod.rs',)) else '::'.join(here[:-1])
            parent=here[:-1]
            items=[m.group(1)] if not m.group(1).startswith('{') else [x.strip() for x in m.group(1)[1:-1].split(',')]
            for it in items:
                first=it.split('::')[0]
                if first and first[0].islower(): refs.add('::'.join(parent+[first]))
                else: refs.add('::'.join(parent))
        for r in refs:
            segs=r.split('::')
            # longest prefix that is a module
            for k in range(len(segs),0,-1):
                cand='::'.join(segs[:k])
                if cand in files and cand!=mod:
                    g[mod].add(cand); break
            else:
                if '' in files and mod!='': pass
    return files,g
def sccs(nodes,g):
    index={};low={};st=[];on=set();out=[];i=[0]
    sys.setrecursionlimit(10000)
    def sc(v):
        index[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
        for w in g.get(v,()):
            if w not in index: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],index[w])
        if low[v]==index[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v: break
            if len(comp)>1: out.append(comp)
    for v in nodes:
        if v not in index: sc(v)
    return out
bad=False
for src in ["capture/src", "ingest/src", "plugin-runtime/src", "schema/src", "connect/src", "common/src"]:
    files,g=deps(src)
    for comp in sccs(files,g):
        bad=True
        print(f"{src}: files importing each other: {sorted(comp)}")
MAX_INGEST_LINES=420
for root,_,fs in os.walk("ingest/src"):
    for f in fs:
        if f.endswith(".rs"):
            path=os.path.join(root,f)
            n=sum(1 for _ in open(path))
            if n>MAX_INGEST_LINES:
                bad=True
                print(f"{path}: {n} lines, over {MAX_INGEST_LINES}: split it by what its parts do")
if not bad:
    print("[layout] no import circles; ingest files within their size")
sys.exit(1 if bad else 0)
