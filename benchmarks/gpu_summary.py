"""The summary of a benchmarks/gpu_all.sh call: every section's exit code and, per case, the step
time, audio-seconds per second and MFU (train_step.py's rows).

  python3 benchmarks/gpu_summary.py OUT_DIR [SECTIONS_TSV]

Reads OUT_DIR/train_step.jsonl (rows tagged with their section) and SECTIONS_TSV (lines
'name<TAB>exit code', 'skipped' for a section the deadline left out); writes OUT_DIR/summary.json,
prints a table and then the JSON, last. Exit code 0 when every section exited 0 and no case failed.
Standard library only: it runs wherever gpu_all.sh does.
"""

import json
import pathlib
import sys

KEYS = ('section', 'case', 'model', 'dtype', 'implementation', 'step_ms', 'audio_s_per_s', 'mfu',
        'attention_ms', 'error')


def summarize(out: pathlib.Path, sections_tsv: pathlib.Path | None) -> dict:
  rows = []
  jsonl = out / 'train_step.jsonl'
  for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
    if line.startswith('{'):
      row = json.loads(line)
      rows.append({k: row[k] for k in KEYS if k in row})
  sections = []
  if sections_tsv and sections_tsv.exists():
    for line in sections_tsv.read_text().splitlines():
      name, rc = line.split('\t')
      sections.append({'section': name, 'rc': int(rc) if rc.lstrip('-').isdigit() else rc})
  machine = out / 'machine.txt'
  return {'machine': machine.read_text().strip().splitlines() if machine.exists() else [],
          'sections': sections, 'rows': rows,
          'failed': [s['section'] for s in sections if s['rc'] != 0]
                    + [f"{r.get('section')}/{r['model']}/{r['dtype']}/{r['case']}"
                       for r in rows if 'error' in r]}


def table(summary: dict) -> str:
  lines = [f"{'section':16} {'case':16} {'model':6} {'dtype':8} {'step_ms':>9} {'audio-s/s':>10} "
           f"{'MFU':>6}  rc / error"]
  rc = {s['section']: s['rc'] for s in summary['sections']}
  for r in summary['rows']:
    ms = r.get('step_ms', r.get('attention_ms'))
    case = r['case'] + ('/' + r['implementation'] if 'implementation' in r else '')
    lines.append(f"{r.get('section', ''):16} {case:16} {r['model']:6} {r['dtype']:8} "
                 f"{'' if ms is None else ms:>9} {r.get('audio_s_per_s', ''):>10} "
                 f"{r.get('mfu', ''):>6}  {rc.get(r.get('section'), '')} {r.get('error', '')[:80]}")
  ran = {r.get('section') for r in summary['rows']}
  lines += [f"{s['section']:16} (no rows)  rc {s['rc']}" for s in summary['sections']
            if s['section'] not in ran]
  return '\n'.join(lines)


def main(argv) -> int:
  out = pathlib.Path(argv[1])
  summary = summarize(out, pathlib.Path(argv[2]) if len(argv) > 2 else None)
  text = json.dumps(summary)
  (out / 'summary.json').write_text(text + '\n')
  print(table(summary))
  print(f"failed: {', '.join(summary['failed']) or 'none'}")
  print(text)
  return 1 if summary['failed'] else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
