import { type Kysely, sql } from 'kysely';

/**
 * Rows in `table` of a database that `open` opens for this one count and closes again (pass
 * `() => createDb(url)`: testkit cannot import @dsm/db, whose own tests use testkit).
 */
export async function rowCount<DB>(
  open: () => { db: Kysely<DB>; close(): Promise<void> },
  table: string,
): Promise<number> {
  const h = open();
  try {
    const r = await sql<{ n: number | string }>`SELECT COUNT(*) AS n FROM ${sql.table(table)}`.execute(h.db);
    return Number(r.rows[0]?.n ?? 0);
  } finally {
    await h.close();
  }
}
