/** A one-line progress bar on stderr, only when stderr is a terminal. */
export function progressBar(total: number, label: string): { update(n: number): void; done(): void } {
  const tty = process.stderr.isTTY;
  const start = Date.now();
  let last = 0;
  const mib = (n: number) => (n / 1048576).toFixed(1);
  const draw = (n: number) => {
    const frac = total > 0 ? n / total : 1;
    const width = 30;
    const filled = Math.round(frac * width);
    const secs = Math.max((Date.now() - start) / 1000, 0.001);
    process.stderr.write(
      `\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${mib(n)}/${mib(total)} MiB ${mib(n / secs)} MiB/s`,
    );
  };
  return {
    update(n) {
      if (!tty) return;
      const now = Date.now();
      if (now - last < 100 && n < total) return;
      last = now;
      draw(n);
    },
    done() {
      if (!tty) return;
      draw(total);
      process.stderr.write('\n');
    },
  };
}
