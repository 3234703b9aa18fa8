import type { Generated } from 'kysely';

/**
 * Row types of the seed tables (names and columns unchanged, so seed-era tools still read them)
 * plus the extension columns. Every table also carries `create_time` / `update_time`, filled by
 * the database: MySQL returns them as `Date`, SQLite as `'YYYY-MM-DD HH:MM:SS'` (UTC) strings.
 */
export interface Timestamps {
  create_time: Generated<Date | string | null>;
  update_time: Generated<Date | string | null>;
}

/** Role `tracker`: storage groups known to the tracker (seeded with `group001`). */
export interface GroupsInfoTable extends Timestamps {
  id: Generated<number>;
  group_name: string | null;
}

/** Role `tracker`: which group an (appid, userid) pair lives on. UNIQUE (appid, userid). */
export interface RouterTable extends Timestamps {
  id: Generated<number>;
  appid: string | null;
  userid: string | null;
  group_name: string | null;
}

/** Role `id`: id generator counters (`id_value` is a BIGINT, returned as a JS number). */
export interface IdGenTable extends Timestamps {
  id: string;
  id_value: number | null;
}

/** Role `storage`: one file per row; `t_file_01`…`t_file_03` are identical. */
export interface FileTable extends Timestamps {
  /** The file id. */
  id: string;
  appid: string | null;
  userid: string | null;
  status: number | null;
  file_path: string | null;
  file_size: number | null;
  /** Extension columns (NULL on rows written by the seed). */
  content_type: string | null;
  sha256: string | null;
  mtime_ms: number | null;
}

/** Role `storage`: resumable uploads in progress. */
export interface UploadTable extends Timestamps {
  /** The file id the upload will become. */
  id: string;
  appid: string;
  userid: string;
  group_name: string;
  temp_path: string;
  /** -1 = unknown. */
  total_size: number;
  content_type: string;
  created_ms: number;
  updated_ms: number;
}

/**
 * Role `storage`: the group's delete log, read by the gateways to drop what they cached of a
 * deleted file (STORAGE_DELETES). `seq` comes from the one row of `t_delete_seq`, which a delete
 * locks until it commits: sequence numbers are committed in order, with no gaps.
 */
export interface DeleteLogTable {
  seq: number;
  appid: string;
  userid: string;
  file_id: string;
  deleted_ms: number;
}

/** Role `storage`: one row (`id` 1), the sequence number of the last delete logged. */
export interface DeleteSeqTable {
  id: number;
  seq: number;
}

export type FileTableName = 't_file_01' | 't_file_02' | 't_file_03';
export const FILE_TABLES: readonly FileTableName[] = Object.freeze(['t_file_01', 't_file_02', 't_file_03']);

/** The kysely database type covering every role's tables. */
export interface Schema {
  t_groups_info: GroupsInfoTable;
  t_router: RouterTable;
  t_id_gen: IdGenTable;
  t_file_01: FileTable;
  t_file_02: FileTable;
  t_file_03: FileTable;
  t_upload: UploadTable;
  t_delete_log: DeleteLogTable;
  t_delete_seq: DeleteSeqTable;
}

export type DbRole = 'tracker' | 'id' | 'storage';
export const DB_ROLES: readonly DbRole[] = Object.freeze(['tracker', 'id', 'storage']);

/** Tables each role's migrations create. */
export const ROLE_TABLES: Readonly<Record<DbRole, readonly (keyof Schema)[]>> = Object.freeze({
  tracker: ['t_groups_info', 't_router'],
  id: ['t_id_gen'],
  storage: ['t_file_01', 't_file_02', 't_file_03', 't_upload', 't_delete_log', 't_delete_seq'],
});
