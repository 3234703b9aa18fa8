// Entry of the bundle (`npm run build` → dist/dsm.mjs). The command itself is a separate chunk,
// and each node package another one loaded only when that node runs, so a storage process never
// loads the gateway's HTTP stack (hono, @hono/node-server, prom-client, jose).
import { fileURLToPath } from 'node:url';

// the cluster launcher (dsm up) starts its nodes from this same bundle
process.env.DSM_ENTRY ??= fileURLToPath(import.meta.url);
await import('./main.ts');
