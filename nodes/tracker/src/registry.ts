import { DsmError, ErrorCode } from '@dsm/common';
import { Errno, type StorageStatus } from '@dsm/packets';
import { GROUP_NAME_RE } from './config.ts';

export type StorageStateName = 'OFFLINE' | 'ONLINE' | 'ACTIVE';

/**
 * One storage as the tracker knows it: what the status command shows (`StorageStatus`: the
 * peer IP of the join's connection as `host`, never one from the body; the join body's port,
 * version and start time; `protocolVersion` 1 for a seed join (10), the carried version for an
 * extension join (14); `beatTime` on the tracker clock; `pendingHeals` −1 = unknown) plus the
 * tracker's own bookkeeping. Times are Unix milliseconds.
 */
export interface StorageRecord extends StorageStatus {
  state: StorageStateName;
  /** Tracker clock when the record went OFFLINE (0 while not offline). */
  offlineSince: number;
  /**
   * The storage's last heartbeat said its store takes writes (true until a beat says
   * otherwise; seed storages never say). A storage whose store does not is handed out last.
   */
  writable: boolean;
  /** Connection the last join / beat came on; its close marks the storage OFFLINE. */
  conn: string;
}

export interface JoinInput {
  group: string;
  hostname: string;
  host: string;
  port: number;
  version: string;
  protocolVersion: number;
  /** Unix seconds, as on the wire. */
  startTime: number;
  joinTime: number;
  totalBytes?: number;
  freeBytes?: number;
  load?: number;
  conn: string;
}

export interface BeatExtInput {
  group: string;
  host: string;
  port: number;
  totalBytes: number;
  freeBytes: number;
  load: number;
  pendingHeals: number;
  /** Absent: writable (a first-version beat without store flags). */
  writable?: boolean;
  conn: string;
}

export interface RegistryOptions {
  /** No beat for this long → OFFLINE. */
  beatTimeoutMs: number;
  /** OFFLINE records are dropped after this long (default 24 h). */
  dropAfterMs?: number;
  now?: () => number;
}

export const DROP_OFFLINE_AFTER_MS = 24 * 60 * 60 * 1000;

const byteOrder = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Validates a group name as the seed's tracker does ("Invalid Groupname: X"). */
export function checkGroupName(group: string): void {
  if (!GROUP_NAME_RE.test(group)) {
    throw new DsmError(ErrorCode.BAD_INPUT, `Invalid Groupname: ${group}`, Errno.BAD_FIELD);
  }
}

export function notJoined(): DsmError {
  return new DsmError(ErrorCode.NOT_JOINED, 'Mark Storage As ACTIVE Fail...', Errno.NOT_JOINED);
}

/**
 * The in-memory storage registry: group → records in join order. A record is identified by
 * (group, peer IP, advertised port); the seed left the port out, so two storages on one host
 * collapsed into one record (quirk 9). Nothing is persisted: after a restart storages re-join
 * when their next beat is refused.
 */
export class Registry {
  readonly #groups = new Map<string, Map<string, StorageRecord>>();
  readonly #opts: Required<RegistryOptions>;

  constructor(opts: RegistryOptions) {
    this.#opts = { dropAfterMs: DROP_OFFLINE_AFTER_MS, now: Date.now, ...opts };
  }

  get beatTimeoutMs(): number {
    return this.#opts.beatTimeoutMs;
  }

  now(): number {
    return this.#opts.now();
  }

  /** Join (10 / 14): creates or overwrites the record; state ONLINE, beat time = tracker now. */
  join(j: JoinInput): StorageRecord {
    checkGroupName(j.group);
    if (j.port === 0) throw new DsmError(ErrorCode.BAD_INPUT, 'Invalid Port: 0', Errno.BAD_FIELD);
    let group = this.#groups.get(j.group);
    if (!group) {
      group = new Map();
      this.#groups.set(j.group, group);
    }
    const key = recordKey(j.host, j.port);
    const now = this.now();
    const prev = group.get(key);
    const rec: StorageRecord = {
      group: j.group,
      hostname: j.hostname,
      host: j.host,
      port: j.port,
      version: j.version,
      protocolVersion: j.protocolVersion,
      startTime: j.startTime * 1000,
      joinTime: j.joinTime * 1000,
      beatTime: now,
      state: 'ONLINE',
      offlineSince: 0,
      totalBytes: j.totalBytes ?? prev?.totalBytes ?? 0,
      freeBytes: j.freeBytes ?? prev?.freeBytes ?? 0,
      load: j.load ?? prev?.load ?? 0,
      pendingHeals: prev?.pendingHeals ?? -1,
      writable: prev?.writable ?? true,
      conn: j.conn,
    };
    if (prev) Object.assign(prev, rec);
    else group.set(key, rec);
    return prev ?? rec;
  }

  /**
   * Seed heartbeat (11): matches (group, hostname, peer IP). Records joined or beating on this
   * same connection are preferred (the seed storage beats on its join connection); otherwise every
   * match is marked. Throws NOT_JOINED when nothing matches.
   */
  beat(group: string, hostname: string, host: string, conn: string): StorageRecord[] {
    const recs = [...(this.#groups.get(group)?.values() ?? [])].filter(
      (r) => r.hostname === hostname && r.host === host,
    );
    if (recs.length === 0) throw notJoined();
    const same = recs.filter((r) => r.conn === conn);
    const hit = same.length > 0 ? same : recs;
    const now = this.now();
    for (const r of hit) this.#markActive(r, now, conn);
    return hit;
  }

  /** Extension heartbeat (15): matches (group, peer IP, port) and updates capacity and load. */
  beatExt(b: BeatExtInput): StorageRecord {
    const r = this.#groups.get(b.group)?.get(recordKey(b.host, b.port));
    if (!r) throw notJoined();
    this.#markActive(r, this.now(), b.conn);
    r.totalBytes = b.totalBytes;
    r.freeBytes = b.freeBytes;
    r.load = b.load;
    r.pendingHeals = b.pendingHeals;
    r.writable = b.writable ?? true;
    return r;
  }

  #markActive(r: StorageRecord, now: number, conn: string): void {
    r.beatTime = now;
    r.state = 'ACTIVE';
    r.offlineSince = 0;
    r.conn = conn;
  }

  /** Marks the storages whose last join/beat came on `conn` OFFLINE. Returns how many. */
  connectionClosed(conn: string): number {
    let n = 0;
    const now = this.now();
    for (const group of this.#groups.values()) {
      for (const r of group.values()) {
        if (r.conn !== conn) continue;
        r.conn = '';
        if (r.state !== 'OFFLINE') {
          r.state = 'OFFLINE';
          r.offlineSince = now;
          n++;
        }
      }
    }
    return n;
  }

  /** No beat for ≥ beatTimeoutMs → OFFLINE; OFFLINE for ≥ dropAfterMs → removed. */
  sweep(): { offline: number; dropped: number } {
    const now = this.now();
    let offline = 0;
    let dropped = 0;
    for (const [name, group] of this.#groups) {
      for (const [key, r] of group) {
        if (r.state !== 'OFFLINE' && now - r.beatTime >= this.#opts.beatTimeoutMs) {
          r.state = 'OFFLINE';
          r.offlineSince = now;
          offline++;
        }
        if (r.state === 'OFFLINE' && now - r.offlineSince >= this.#opts.dropAfterMs) {
          group.delete(key);
          dropped++;
        }
      }
      if (group.size === 0) this.#groups.delete(name);
    }
    return { offline, dropped };
  }

  /** Group names in byte order. */
  groupNames(): string[] {
    return [...this.#groups.keys()].sort(byteOrder);
  }

  /** A group's records in join order. */
  storages(group: string): StorageRecord[] {
    return [...(this.#groups.get(group)?.values() ?? [])];
  }

  active(group: string): StorageRecord[] {
    return this.storages(group).filter((r) => r.state === 'ACTIVE');
  }

  get(group: string, host: string, port: number): StorageRecord | undefined {
    return this.#groups.get(group)?.get(recordKey(host, port));
  }

  /** Groups with at least one ACTIVE storage, with those storages. */
  activeGroups(): Map<string, StorageRecord[]> {
    const out = new Map<string, StorageRecord[]>();
    for (const name of this.groupNames()) {
      const act = this.active(name);
      if (act.length > 0) out.set(name, act);
    }
    return out;
  }

  /**
   * Storages to hand to a client: the group's ACTIVE storages, those whose store takes writes
   * first (one that lost its GlusterFS quorum refuses uploads, and its reads may be stale),
   * then least load, then most free bytes; at most `max`. A storage that cannot write stays in
   * the list, last, so a group whose members all lost quorum still serves reads. Ties are
   * broken at random, so storages that report neither (seed storages) share the clients as
   * the seed's random rotation did.
   */
  pick(group: string, max: number): StorageRecord[] {
    const recs = this.active(group);
    for (let i = recs.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [recs[i], recs[j]] = [recs[j] as StorageRecord, recs[i] as StorageRecord];
    }
    // Array.prototype.sort is stable: equal storages keep the shuffled order.
    return recs
      .sort((a, b) => Number(b.writable) - Number(a.writable) || a.load - b.load || b.freeBytes - a.freeBytes)
      .slice(0, max);
  }

  get size(): number {
    let n = 0;
    for (const g of this.#groups.values()) n += g.size;
    return n;
  }

  toStatus(r: StorageRecord): StorageStatus {
    // the status fields only: the bookkeeping (offlineSince, conn) stays in the tracker
    const { offlineSince: _offlineSince, conn: _conn, ...status } = r;
    return status;
  }
}

function recordKey(host: string, port: number): string {
  return `${host}|${port}`;
}

// ---------------------------------------------------------------------------------------------
// Group list text (13), as the seed prints it.
// ---------------------------------------------------------------------------------------------

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const two = (n: number) => String(n).padStart(2, '0');

/** C `ctime` without its newline, local time: `Sun Mar 10 20:21:38 2024`, `Mon Mar  4 …`. */
export function ctime(ms: number): string {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return String(Math.trunc(ms / 1000)); // beyond what Date can show
  return (
    `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${d.getFullYear()}`
  );
}

/** The seed's group list text: groups in byte order, storages in join order, no final newline. */
export function formatGroupList(reg: Registry): string {
  const lines: string[] = [];
  const names = reg.groupNames();
  lines.push(`COUNT OF GROUPS: ${names.length}`);
  for (const name of names) {
    const recs = reg.storages(name);
    lines.push(`GROUPNAME: ${name}`);
    lines.push(`COUNT OF STORAGES: ${recs.length}`);
    lines.push(`COUNT OF ACTIVE STORAGES: ${recs.filter((r) => r.state === 'ACTIVE').length}`);
    for (const r of recs) {
      lines.push(`VERSION: ${r.version}`);
      lines.push(`HOSTNAME: ${r.hostname}`);
      lines.push(`ADDRESS: ${r.host.includes(':') ? `[${r.host}]` : r.host}:${r.port}`);
      lines.push(`STARTUP TIME: ${ctime(r.startTime)}`);
      lines.push(`JOIN TIME: ${ctime(r.joinTime)}`);
      lines.push(`BEAT TIME: ${ctime(r.beatTime)}`);
      lines.push(`STATUS: ${r.state}`);
    }
  }
  return lines.join('\n');
}
