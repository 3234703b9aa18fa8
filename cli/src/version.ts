import { readFileSync } from 'node:fs';

// The bundle (cli/build.mjs) replaces this name with the root package.json's version at build
// time; from the sources (tsx) it is undefined and the version is read from that file.
declare const __DSM_VERSION__: string | undefined;

/** The dsm version: the root package.json's `version` (the cli package carries the same). */
export function dsmVersion(): string {
  if (typeof __DSM_VERSION__ === 'string') return __DSM_VERSION__;
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version?: unknown;
  };
  if (typeof pkg.version !== 'string') throw new Error('the root package.json has no version');
  return pkg.version;
}

/** `dsm --version`: `dsm <version>` then `node <version>`; with --json one document. */
export function versionText(json: boolean): string {
  const info = { name: 'dsm', version: dsmVersion(), node: process.version };
  return json ? `${JSON.stringify(info)}\n` : `dsm ${info.version}\nnode ${info.node}\n`;
}
