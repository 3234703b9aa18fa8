import { Command } from '@dsm/packets';

/**
 * Which commands need an authenticated connection when `auth.required` is on. One table for
 * every node; a command that is not listed here is a write (refused by default).
 * - open: liveness, the handshake itself (keepalived's PING check has no key) and the request
 *   context (a log label for the next request, which is itself checked);
 * - read: also needs auth when `auth.reads` is on;
 * - write: everything else (uploads, deletes, resumable uploads, id get, join, beat, group
 *   list and status, which reveal the cluster's layout, and the address list (12), which
 *   assigns a group to a user it has not seen: a `t_router` row for ever. Reads that only look
 *   a route up use TRACKER_LOCATE (17)).
 */
export type CommandAccess = 'open' | 'read' | 'write';

const OPEN: ReadonlySet<number> = new Set([
  Command.PING,
  Command.AUTH_CHALLENGE,
  Command.AUTH_PROVE,
  Command.REQUEST_CONTEXT,
]);
const READ: ReadonlySet<number> = new Set([
  Command.STORAGE_SIZE,
  Command.STORAGE_DOWNLOAD,
  Command.STORAGE_STAT,
  Command.TRACKER_LOCATE,
]);

export function commandAccess(command: number): CommandAccess {
  if (OPEN.has(command)) return 'open';
  return READ.has(command) ? 'read' : 'write';
}
