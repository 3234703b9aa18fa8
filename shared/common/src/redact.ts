/**
 * The URL with its password replaced by `***`, for messages and logs (database, Redis and KV
 * store URLs alike). With a `scheme://` the password runs from the first `:` after the user
 * name to the LAST `@`, so a password holding an unencoded `@`, `/` or `:` is hidden whole
 * (hiding too much beats leaking a piece of it). Without a scheme (a mistyped `user:pass@host`)
 * a `:…@` stretch with no `/` in it is hidden, which leaves `sqlite:/home/a@b/x.db` alone.
 */
export function redactUrl(url: string): string {
  const withScheme = /^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[\s\S]*@/i;
  if (withScheme.test(url)) return url.replace(withScheme, '$1***@');
  return url.replace(/:[^:@/]*@/, ':***@');
}
