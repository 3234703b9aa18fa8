import { setTimeout as sleep } from 'node:timers/promises';
import { DsmError, ErrorCode, errorCodeOf, messageOf } from '@dsm/common';
import { Errno } from '@dsm/packets';
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';
import { type DbDialect, SQLITE_BUSY_TIMEOUT_MS } from './create-db.ts';
import { dbError, isDbUnavailable } from './errors.ts';
import type { DbRole, Schema } from './schema.ts';

// biome-ignore lint/suspicious/noExplicitAny: migrations run against an untyped database
type AnyDb = Kysely<any>;

interface ColumnSpec {
  name: string;
  mysql: string;
  sqlite: string;
}

interface IndexSpec {
  name: string;
  columns: string[];
  unique: boolean;
}

interface TableSpec {
  name: keyof Schema;
  columns: ColumnSpec[];
  /** MySQL table-level primary key (SQLite declares it on the column when `sqliteInlinePk`). */
  primaryKey: string;
  sqliteInlinePk?: boolean;
  indexes?: IndexSpec[];
}

const col = (name: string, def: string, sqliteDef = def): ColumnSpec => ({
  name,
  mysql: def,
  sqlite: sqliteDef,
});

const TIMESTAMP_COLUMNS: ColumnSpec[] = [
  col('create_time', 'TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP'),
  col(
    'update_time',
    'TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP',
    'TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP',
  ),
];

const AUTO_ID = col('id', 'INT UNSIGNED NOT NULL AUTO_INCREMENT', 'INTEGER PRIMARY KEY AUTOINCREMENT');

const fileTable = (name: 't_file_01' | 't_file_02' | 't_file_03'): TableSpec => ({
  name,
  primaryKey: 'id',
  columns: [
    col('id', 'VARCHAR(128) NOT NULL'),
    col('appid', 'VARCHAR(32) NULL'),
    col('userid', 'VARCHAR(256) NULL'),
    col('status', 'TINYINT NULL'),
    col('file_path', 'VARCHAR(512) NULL'),
    col('file_size', 'BIGINT NULL'),
    col('content_type', 'VARCHAR(128) NULL'),
    col('sha256', 'CHAR(64) NULL'),
    col('mtime_ms', 'BIGINT NULL'),
    ...TIMESTAMP_COLUMNS,
  ],
});

const TABLES: Record<DbRole, TableSpec[]> = {
  tracker: [
    {
      name: 't_groups_info',
      primaryKey: 'id',
      sqliteInlinePk: true,
      columns: [AUTO_ID, col('group_name', 'VARCHAR(32) NULL'), ...TIMESTAMP_COLUMNS],
    },
    {
      name: 't_router',
      primaryKey: 'id',
      sqliteInlinePk: true,
      columns: [
        AUTO_ID,
        col('appid', 'VARCHAR(32) NULL'),
        col('userid', 'VARCHAR(256) NULL'),
        col('group_name', 'VARCHAR(32) NULL'),
        ...TIMESTAMP_COLUMNS,
      ],
      indexes: [{ name: 'uk_t_router_appid_userid', columns: ['appid', 'userid'], unique: true }],
    },
  ],
  id: [
    {
      name: 't_id_gen',
      primaryKey: 'id',
      columns: [col('id', 'VARCHAR(64) NOT NULL'), col('id_value', 'BIGINT NULL'), ...TIMESTAMP_COLUMNS],
    },
  ],
  storage: [
    fileTable('t_file_01'),
    fileTable('t_file_02'),
    fileTable('t_file_03'),
    {
      name: 't_upload',
      primaryKey: 'id',
      columns: [
        col('id', 'VARCHAR(128) NOT NULL'),
        col('appid', 'VARCHAR(32) NOT NULL'),
        col('userid', 'VARCHAR(256) NOT NULL'),
        col('group_name', 'VARCHAR(32) NOT NULL'),
        col('temp_path', 'VARCHAR(512) NOT NULL'),
        col('total_size', 'BIGINT NOT NULL'),
        col('content_type', 'VARCHAR(128) NOT NULL'),
        col('created_ms', 'BIGINT NOT NULL'),
        col('updated_ms', 'BIGINT NOT NULL'),
        ...TIMESTAMP_COLUMNS,
      ],
      indexes: [{ name: 'idx_t_upload_updated_ms', columns: ['updated_ms'], unique: false }],
    },
  ],
};

/** Role `storage`, migration 0002: the delete log (schema.ts DeleteLogTable). */
const DELETE_LOG_TABLES: TableSpec[] = [
  {
    name: 't_delete_seq',
    primaryKey: 'id',
    columns: [col('id', 'INT NOT NULL'), col('seq', 'BIGINT NOT NULL')],
  },
  {
    name: 't_delete_log',
    primaryKey: 'seq',
    columns: [
      col('seq', 'BIGINT NOT NULL'),
      col('appid', 'VARCHAR(32) NOT NULL'),
      col('userid', 'VARCHAR(256) NOT NULL'),
      col('file_id', 'VARCHAR(128) NOT NULL'),
      col('deleted_ms', 'BIGINT NOT NULL'),
    ],
    indexes: [{ name: 'idx_t_delete_log_deleted_ms', columns: ['deleted_ms'], unique: false }],
  },
];

const q = (dialect: DbDialect, id: string) => (dialect === 'mysql' ? `\`${id}\`` : `"${id}"`);

function createTableSql(dialect: DbDialect, t: TableSpec): string {
  const parts = t.columns.map((c) => `${q(dialect, c.name)} ${dialect === 'mysql' ? c.mysql : c.sqlite}`);
  if (dialect === 'mysql' || !t.sqliteInlinePk) parts.push(`PRIMARY KEY (${q(dialect, t.primaryKey)})`);
  const tail = dialect === 'mysql' ? ' ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin' : '';
  return `CREATE TABLE IF NOT EXISTS ${q(dialect, t.name)} (\n  ${parts.join(',\n  ')}\n)${tail}`;
}

async function existingColumns(
  db: AnyDb,
  dialect: DbDialect,
  table: string,
): Promise<Map<string, number | null>> {
  // name → VARCHAR length (MySQL) / null
  const out = new Map<string, number | null>();
  if (dialect === 'mysql') {
    const r = await sql<{ name: string; len: number | null }>`
      SELECT COLUMN_NAME AS name, CHARACTER_MAXIMUM_LENGTH AS len FROM information_schema.COLUMNS
      WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ${table}`.execute(db);
    for (const row of r.rows) out.set(row.name.toLowerCase(), row.len === null ? null : Number(row.len));
  } else {
    const r = await sql<{ name: string }>`SELECT name FROM pragma_table_info(${table})`.execute(db);
    for (const row of r.rows) out.set(row.name.toLowerCase(), null);
  }
  return out;
}

async function indexExists(db: AnyDb, dialect: DbDialect, table: string, index: string): Promise<boolean> {
  if (dialect === 'mysql') {
    const r = await sql<{ n: number }>`
      SELECT COUNT(*) AS n FROM information_schema.STATISTICS
      WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ${table} AND INDEX_NAME = ${index}`.execute(db);
    return Number(r.rows[0]?.n ?? 0) > 0;
  }
  const r = await sql<{ n: number }>`
    SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'index' AND name = ${index}`.execute(db);
  return Number(r.rows[0]?.n ?? 0) > 0;
}

/**
 * Creates a table, or adopts one left by the seed: adds missing columns, widens short VARCHARs
 * (MySQL), adds missing indexes (a duplicate (appid, userid) left by the seed is reported).
 */
async function ensureTable(db: AnyDb, dialect: DbDialect, t: TableSpec): Promise<void> {
  await sql.raw(createTableSql(dialect, t)).execute(db);
  const have = await existingColumns(db, dialect, t.name);
  for (const c of t.columns) {
    const len = have.get(c.name);
    if (len === undefined) {
      // SQLite cannot ADD a column with a non-constant default.
      const def = dialect === 'mysql' ? c.mysql : c.sqlite.replace(/DEFAULT CURRENT_TIMESTAMP/i, '');
      await sql.raw(`ALTER TABLE ${q(dialect, t.name)} ADD COLUMN ${q(dialect, c.name)} ${def}`).execute(db);
      continue;
    }
    const want = /^VARCHAR\((\d+)\)/i.exec(c.mysql);
    if (dialect === 'mysql' && want && len !== null && len < Number(want[1])) {
      await sql.raw(`ALTER TABLE ${q(dialect, t.name)} MODIFY ${q(dialect, c.name)} ${c.mysql}`).execute(db);
    }
  }
  for (const ix of t.indexes ?? []) {
    if (await indexExists(db, dialect, t.name, ix.name)) continue;
    const cols = ix.columns.map((c) => q(dialect, c)).join(', ');
    try {
      await sql
        .raw(
          `CREATE ${ix.unique ? 'UNIQUE ' : ''}INDEX ${q(dialect, ix.name)} ON ${q(dialect, t.name)} (${cols})`,
        )
        .execute(db);
    } catch (e) {
      if (ix.unique && /duplicate|unique/i.test(messageOf(e))) {
        throw new DsmError(
          ErrorCode.CONFIG,
          `cannot add UNIQUE (${ix.columns.join(', ')}) to ${t.name}: existing rows have duplicates; ` +
            `remove them and restart (${messageOf(e)})`,
          undefined,
          { cause: e },
        );
      }
      throw e;
    }
  }
  if (dialect === 'sqlite' && t.columns.some((c) => c.name === 'update_time')) {
    // MySQL has ON UPDATE CURRENT_TIMESTAMP; SQLite needs a trigger (recursive triggers are off).
    await sql
      .raw(
        `CREATE TRIGGER IF NOT EXISTS "trg_${t.name}_update_time" AFTER UPDATE ON "${t.name}" FOR EACH ROW ` +
          `WHEN NEW.update_time IS OLD.update_time BEGIN ` +
          `UPDATE "${t.name}" SET update_time = CURRENT_TIMESTAMP WHERE rowid = NEW.rowid; END`,
      )
      .execute(db);
  }
}

function migrationsFor(dialect: DbDialect, role: DbRole): Record<string, Migration> {
  return {
    [`0001_${role}_initial`]: {
      async up(db: AnyDb) {
        for (const t of TABLES[role]) await ensureTable(db, dialect, t);
        if (role === 'tracker') {
          const r = await sql<{ n: number }>`SELECT COUNT(*) AS n FROM t_groups_info`.execute(db);
          if (Number(r.rows[0]?.n ?? 0) === 0) {
            await sql`INSERT INTO t_groups_info (group_name) VALUES ('group001')`.execute(db);
          }
        }
      },
    },
    ...(role === 'storage'
      ? {
          '0002_storage_delete_log': {
            async up(db: AnyDb) {
              for (const t of DELETE_LOG_TABLES) await ensureTable(db, dialect, t);
              const r = await sql<{ n: number }>`SELECT COUNT(*) AS n FROM t_delete_seq`.execute(db);
              if (Number(r.rows[0]?.n ?? 0) === 0)
                await sql`INSERT INTO t_delete_seq (id, seq) VALUES (1, 0)`.execute(db);
            },
          },
        }
      : {}),
  };
}

/** Name of the kysely migration table of a role (`dsm_migrations_<role>`). */
export function migrationTableName(role: DbRole): string {
  return `dsm_migrations_${role}`;
}

function migrator(db: AnyDb, dialect: DbDialect, role: DbRole): Migrator {
  const provider: MigrationProvider = { getMigrations: async () => migrationsFor(dialect, role) };
  return new Migrator({
    db,
    provider,
    migrationTableName: migrationTableName(role),
    migrationLockTableName: `${migrationTableName(role)}_lock`,
  });
}

const RETRYABLE_CODES = new Set([
  'ER_TABLE_EXISTS_ERROR',
  'ER_DUP_KEYNAME',
  'ER_DUP_FIELDNAME',
  'ER_DUP_ENTRY',
  'ER_LOCK_DEADLOCK',
  'ER_LOCK_WAIT_TIMEOUT',
  'SQLITE_CONSTRAINT_PRIMARYKEY',
  'SQLITE_CONSTRAINT_UNIQUE',
]);

function isRetryable(e: unknown): boolean {
  const code = errorCodeOf(e) ?? '';
  const msg = String((e as { message?: unknown })?.message ?? '');
  return RETRYABLE_CODES.has(code) || code.startsWith('SQLITE_BUSY') || /already exists|duplicate/i.test(msg);
}

async function allApplied(db: AnyDb, dialect: DbDialect, role: DbRole): Promise<boolean> {
  try {
    const ms = await migrator(db, dialect, role).getMigrations();
    return ms.every((m) => m.executedAt !== undefined);
  } catch {
    return false;
  }
}

const MIGRATE_LOCK_TIMEOUT_S = 60;

/** Runs the migrator on one MySQL connection holding GET_LOCK('dsm_migrate_<role>'). */
async function runMysql(db: AnyDb, role: DbRole): Promise<string[]> {
  return db.connection().execute(async (conn) => {
    const lock = `dsm_migrate_${role}`;
    const r = await sql<{
      ok: number | null;
    }>`SELECT GET_LOCK(${lock}, ${MIGRATE_LOCK_TIMEOUT_S}) AS ok`.execute(conn);
    if (Number(r.rows[0]?.ok) !== 1) {
      throw new DsmError(
        ErrorCode.DB_UNAVAILABLE,
        `timed out waiting for the migration lock ${lock}`,
        Errno.DB_UNAVAILABLE,
      );
    }
    try {
      return await runMigrator(conn, 'mysql', role);
    } finally {
      await sql`SELECT RELEASE_LOCK(${lock})`.execute(conn).catch(() => undefined);
    }
  });
}

/**
 * Runs the migrator inside one BEGIN IMMEDIATE transaction, so other processes (or other
 * connections of this one) wait until it commits. The write lock is taken with busy_timeout 0
 * and retried asynchronously: better-sqlite3 is synchronous, and a blocking busy wait would
 * freeze this process while another connection in it holds the lock.
 */
async function runSqlite(db: AnyDb, role: DbRole): Promise<string[]> {
  return db.connection().execute(async (conn) => {
    const deadline = Date.now() + MIGRATE_LOCK_TIMEOUT_S * 1000;
    await sql`PRAGMA busy_timeout = 0`.execute(conn);
    try {
      for (;;) {
        try {
          await sql`BEGIN IMMEDIATE`.execute(conn);
          break;
        } catch (e) {
          if (!(errorCodeOf(e) ?? '').startsWith('SQLITE_BUSY') || Date.now() > deadline) throw e;
          await sleep(10 + Math.random() * 40);
        }
      }
    } finally {
      await sql.raw(`PRAGMA busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`).execute(conn);
    }
    try {
      const applied = await runMigrator(conn, 'sqlite', role);
      await sql`COMMIT`.execute(conn);
      return applied;
    } catch (e) {
      await sql`ROLLBACK`.execute(conn).catch(() => undefined);
      throw e;
    }
  });
}

async function runMigrator(db: AnyDb, dialect: DbDialect, role: DbRole): Promise<string[]> {
  const { error, results } = await migrator(db, dialect, role).migrateToLatest();
  if (error) throw error;
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

/**
 * Brings a role's tables up to date (in-code migrations; table `dsm_migrations_<role>`, so one
 * database can hold several roles). Idempotent, and safe to call concurrently from several
 * processes on one database. Returns the names of the migrations this call applied (empty when
 * already up to date). Throws DsmError(DB_UNAVAILABLE) when the database cannot be reached.
 */
export async function migrate(db: Kysely<Schema>, dialect: DbDialect, role: DbRole): Promise<string[]> {
  const anyDb = db as unknown as AnyDb;
  if (!(role in TABLES)) throw new DsmError(ErrorCode.CONFIG, `unknown database role "${role}"`);
  let lastError: unknown;
  for (let attempt = 0; attempt < 6; attempt++) {
    if (attempt > 0) await sleep(50 * 2 ** attempt * (0.5 + Math.random()));
    try {
      return dialect === 'mysql' ? await runMysql(anyDb, role) : await runSqlite(anyDb, role);
    } catch (e) {
      lastError = e;
      // Another process may have finished the same migration between our checks.
      if (await allApplied(anyDb, dialect, role)) return [];
      if (!isRetryable(e) && !(isDbUnavailable(e) && attempt < 2)) break;
    }
  }
  return dbError(lastError, `migrating the ${role} tables`);
}
