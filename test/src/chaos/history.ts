/**
 * The chaos run's history: every client operation with its start/end time (ms since the run
 * started) and outcome, and the checks over it. Pure functions, so the checker itself is
 * tested on hand-made histories (history.test.ts).
 */

export type OpKind = 'upload' | 'download' | 'delete' | 'verify';
/** `ok`: the operation succeeded; `not-found`: the server said the file does not exist. */
export type Outcome = 'ok' | 'not-found' | 'error';

export interface Op {
  seq: number;
  /** Worker index; -1 for the final verification. */
  worker: number;
  kind: OpKind;
  /** File number (see content.ts). */
  file: number;
  start: number;
  end: number;
  outcome: Outcome;
  /** Error code / errno / message of a failure. */
  code?: string;
  errno?: number;
  message?: string;
  /** upload: sha-256 in the storage's reply; download/verify: sha-256 of the bytes returned. */
  sha256?: string;
  bytes?: number;
  /** download/verify whose bytes differ: how (see classifyMismatch). */
  mismatch?: { kind: 'foreign' | 'corrupt'; others: number[] };
}

export interface FileRecord {
  n: number;
  size: number;
  sha256: string;
}

export type ViolationKind =
  | 'ack-sha-mismatch'
  | 'wrong-bytes'
  | 'foreign-bytes'
  | 'deleted-came-back'
  | 'acked-reported-missing'
  | 'acked-lost';

export interface Violation {
  kind: ViolationKind;
  file: number;
  op?: Op;
  detail: string;
}

interface FileOps {
  upload?: Op;
  deletes: Op[];
  reads: Op[];
}

function byFile(ops: readonly Op[]): Map<number, FileOps> {
  const m = new Map<number, FileOps>();
  for (const op of ops) {
    let f = m.get(op.file);
    if (!f) {
      f = { deletes: [], reads: [] };
      m.set(op.file, f);
    }
    if (op.kind === 'upload') f.upload = op;
    else if (op.kind === 'delete') f.deletes.push(op);
    else f.reads.push(op);
  }
  return m;
}

const acked = (u: Op | undefined): u is Op => u?.outcome === 'ok';
/** A delete that is known to have taken effect: acknowledged, or answered "no such file". */
const confirmedDelete = (d: Op) => d.outcome === 'ok' || d.outcome === 'not-found';

/**
 * Checks the history:
 * - an acknowledged upload's reply carries the sha-256 of the bytes sent;
 * - a read that returned bytes returned exactly the file's bytes (`foreign-bytes` when they
 *   name another file, `wrong-bytes` otherwise);
 * - no read that started after a delete was confirmed returned bytes;
 * - no read of an acknowledged upload, started after the acknowledgement and not overlapping
 *   any delete attempt, was answered "not found";
 * - every acknowledged upload with no delete attempt was read back byte-equal by the final
 *   verification (kind `verify`).
 */
export function checkHistory(files: ReadonlyMap<number, FileRecord>, ops: readonly Op[]): Violation[] {
  const out: Violation[] = [];
  for (const [n, f] of byFile(ops)) {
    const rec = files.get(n);
    if (!rec) continue;
    const up = f.upload;
    if (acked(up) && up.sha256 !== undefined && up.sha256 !== rec.sha256) {
      out.push({
        kind: 'ack-sha-mismatch',
        file: n,
        op: up,
        detail: `storage acknowledged sha-256 ${up.sha256}, sent ${rec.sha256}`,
      });
    }
    for (const r of f.reads) {
      if (r.outcome === 'ok') {
        if (r.sha256 !== rec.sha256 || r.bytes !== rec.size) {
          const foreign = r.mismatch?.kind === 'foreign';
          out.push({
            kind: foreign ? 'foreign-bytes' : 'wrong-bytes',
            file: n,
            op: r,
            detail: foreign
              ? `read returned bytes of file(s) ${r.mismatch?.others.join(',')}`
              : `read returned ${r.bytes} bytes sha-256 ${r.sha256}, expected ${rec.size} bytes ${rec.sha256}`,
          });
        }
        const gone = f.deletes.find((d) => confirmedDelete(d) && d.end < r.start);
        if (gone) {
          out.push({
            kind: 'deleted-came-back',
            file: n,
            op: r,
            detail: `read at ${r.start.toFixed(0)} ms returned bytes; delete confirmed at ${gone.end.toFixed(0)} ms`,
          });
        }
      } else if (r.outcome === 'not-found') {
        const overlapsDelete = f.deletes.some((d) => d.start < r.end);
        if (acked(up) && up.end < r.start && !overlapsDelete) {
          out.push({
            kind: 'acked-reported-missing',
            file: n,
            op: r,
            detail: `${r.kind} at ${r.start.toFixed(0)} ms: not found; upload acknowledged at ${up.end.toFixed(0)} ms`,
          });
        }
      }
    }
    if (acked(up) && f.deletes.length === 0) {
      const verified = f.reads.some(
        (r) => r.kind === 'verify' && r.outcome === 'ok' && r.sha256 === rec.sha256 && r.bytes === rec.size,
      );
      if (!verified) {
        const last = [...f.reads].reverse().find((r) => r.kind === 'verify');
        out.push({
          kind: 'acked-lost',
          file: n,
          op: last,
          detail: last
            ? `final read: ${last.outcome} ${last.code ?? ''} ${last.message ?? ''}`.trim()
            : 'never read back',
        });
      }
    }
  }
  return out;
}

export interface Outage {
  kind: OpKind | 'any';
  /** Longest interval with no successful operation of this kind and at least one failure. */
  ms: number;
  from: number;
  to: number;
  failures: number;
}

/**
 * Longest outage of a kind: the operations sorted by end time, the longest interval between two
 * consecutive successful completions (or the window's start/end) in which at least one
 * operation of that kind failed. "not-found" counts as an answer, not a failure.
 */
export function longestOutage(
  ops: readonly Op[],
  kind: OpKind | 'any',
  windowStart: number,
  windowEnd: number,
): Outage {
  const mine = ops
    .filter((o) => (kind === 'any' ? o.kind !== 'verify' : o.kind === kind))
    .sort((a, b) => a.end - b.end);
  let best: Outage = { kind, ms: 0, from: 0, to: 0, failures: 0 };
  let lastOk = windowStart;
  let failures = 0;
  const close = (to: number) => {
    if (failures > 0 && to - lastOk > best.ms) best = { kind, ms: to - lastOk, from: lastOk, to, failures };
  };
  for (const o of mine) {
    if (o.outcome === 'error') {
      failures++;
      continue;
    }
    close(o.end);
    lastOk = o.end;
    failures = 0;
  }
  close(Math.max(windowEnd, mine.at(-1)?.end ?? windowEnd));
  return best;
}
