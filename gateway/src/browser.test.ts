import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type Stack, startStack } from './test-support.ts';

// A real browser: Debian's Chromium, headless, plays an uploaded MP4 from the Node gateway in a
// <video> element and seeks to the middle (which it does with HTTP range requests).

const CHROMIUM = '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];
const DURATION = 10;

let s: Stack;
let browser: Browser;
let page: Server;
let pageUrl = '';
let videoUrl = '';

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is required for the browser test (Debian package "chromium")`);
  }
  await run('ffmpeg', ['-version']).catch(() => {
    throw new Error('ffmpeg is required for the browser test (Debian package "ffmpeg")');
  });
  const [stack, b] = await Promise.all([
    startStack('sqlite+memory'),
    chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true }),
  ]);
  s = stack;
  browser = b;

  // ~10 s of H.264 + AAC, moov first (+faststart), as a web player would get it
  const mp4 = join(s.dir, 'clip.mp4');
  await run('ffmpeg', [
    ...['-v', 'error', '-f', 'lavfi', '-i', `testsrc=duration=${DURATION}:size=320x240:rate=25`],
    ...['-f', 'lavfi', '-i', `sine=frequency=440:duration=${DURATION}`],
    ...['-c:v', 'libx264', '-preset', 'ultrafast', '-g', '25', '-pix_fmt', 'yuv420p'],
    ...['-c:a', 'aac', '-b:a', '64k', '-movflags', '+faststart', '-shortest', '-y', mp4],
  ]);
  const up = await fetch(`${s.gateway.url}/files?filename=clip.mp4`, {
    method: 'POST',
    body: new Uint8Array(readFileSync(mp4)),
    headers: { 'content-type': 'video/mp4' },
  });
  expect(up.status).toBe(201);
  const reply = (await up.json()) as { namedUrl: string; size: number };
  expect(reply.size).toBe(statSync(mp4).size);
  videoUrl = reply.namedUrl;

  // The player page comes from a loopback origin of its own (Chromium refuses loopback media
  // for about:blank), so the video is a cross-origin request to the gateway, as in production.
  page = createServer((req, res) => {
    if (req.url !== '/') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html><body>
<video id="v" src="${videoUrl}" preload="auto" muted playsinline crossorigin="anonymous"></video>
</body></html>`);
  });
  await new Promise<void>((r) => page.listen(0, '127.0.0.1', () => r()));
  pageUrl = `http://127.0.0.1:${(page.address() as AddressInfo).port}/`;
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await new Promise<void>((r) => (page ? page.close(() => r()) : r()));
  await s?.stop();
});

async function rangeReplies(): Promise<number> {
  const text = await (await fetch(`${s.gateway.adminUrl}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(/^dsm_gateway_requests_total\{[^}]*status="206"[^}]*\} (\d+)/gm))
    n += Number(m[1]);
  return n;
}

describe('headless Chromium', () => {
  it('plays an uploaded MP4 (H.264 + AAC) in <video> and seeks to the middle', async () => {
    const ranges = await rangeReplies();
    const ctx = await browser.newContext();
    try {
      const tab = await ctx.newPage();
      await tab.goto(pageUrl);
      const target = DURATION / 2;
      const r = await tab.evaluate(async (t: number) => {
        const v = document.getElementById('v') as HTMLVideoElement;
        const failed = () => new Error(`media error ${v.error?.code}: ${v.error?.message}`);
        const when = (ev: string, ms: number) =>
          new Promise<void>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no "${ev}" within ${ms} ms`)), ms);
            v.addEventListener(
              ev,
              () => {
                clearTimeout(timer);
                resolve();
              },
              { once: true },
            );
            v.addEventListener('error', () => reject(failed()), { once: true });
          });
        if (v.readyState < 1) await when('loadedmetadata', 15_000);
        const playing = when('playing', 15_000);
        await v.play();
        await playing;
        const seeked = when('seeked', 15_000);
        v.currentTime = t;
        await seeked;
        return {
          currentTime: v.currentTime,
          readyState: v.readyState,
          duration: v.duration,
          width: v.videoWidth,
          height: v.videoHeight,
          error: v.error?.code ?? null,
          canPlayH264: v.canPlayType('video/mp4; codecs="avc1.42E01E, mp4a.40.2"'),
        };
      }, target);
      expect(r.error).toBeNull();
      expect(r.canPlayH264).not.toBe('');
      expect(r.duration).toBeCloseTo(DURATION, 0);
      expect([r.width, r.height]).toEqual([320, 240]);
      expect(Math.abs(r.currentTime - target)).toBeLessThan(0.5);
      expect(r.readyState).toBeGreaterThanOrEqual(2); // HAVE_CURRENT_DATA: the frame at the seek is there
    } finally {
      await ctx.close();
    }
    // the browser fetched the video with range requests
    expect(await rangeReplies()).toBeGreaterThan(ranges);
  });
});
