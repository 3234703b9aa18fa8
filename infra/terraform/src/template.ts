/**
 * The rendered user data is read by Terraform's `templatefile()` with one variable per secret.
 * Everything else in it is literal: `${` and `%{` are escaped (`$${`, `%%{`) and the only
 * interpolations are `${name}` for the `{{secret:name}}` marks of dsm.json.
 */
import { SECRET_MARK } from './spec.ts';

/** Turns rendered text (with `{{secret:x}}` marks) into a Terraform template. */
export function toTerraformTemplate(text: string): string {
  return text
    .replace(/\$\{/g, () => '$${')
    .replace(/%\{/g, () => '%%{')
    .replace(SECRET_MARK, (_m, name: string) => `\${${name}}`);
}

/**
 * What Terraform's `templatefile(path, vars)` makes of a template written by
 * `toTerraformTemplate` (the subset it uses: escapes and `${identifier}`). Anything else that
 * Terraform would interpret is refused, so a test catches a template this cannot vouch for.
 */
export function applyTerraformTemplate(tpl: string, vars: Record<string, string>): string {
  return tpl.replace(/\$\$\{|%%\{|\$\{([^}]*)\}|%\{/g, (m, name: string | undefined) => {
    if (m === '$${') return '${';
    if (m === '%%{') return '%{';
    if (m === '%{') throw new Error('template directive %{ in a rendered template');
    if (name === undefined || !/^[a-z][a-z0-9_]*$/.test(name))
      throw new Error(`unexpected interpolation ${m} in a rendered template`);
    const v = vars[name];
    if (v === undefined) throw new Error(`vars map does not contain key "${name}"`);
    return v;
  });
}

/** The variables a template made by `toTerraformTemplate` needs. */
export function templateVariables(tpl: string): string[] {
  const out = new Set<string>();
  for (const m of tpl.matchAll(/\$\$\{|\$\{([a-z][a-z0-9_]*)\}/g)) if (m[1]) out.add(m[1]);
  return [...out].sort();
}
