import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { curl, run, type Stack, startStack } from './test-support.ts';

let s: Stack;

beforeAll(async () => {
  for (const tool of ['ffmpeg', 'ffprobe']) {
    await run(tool, ['-version']).catch(() => {
      throw new Error(
        `${tool} is required for the media tests (Debian package "ffmpeg": apt-get install -y ffmpeg)`,
      );
    });
  }
  s = await startStack('sqlite+memory');
});

afterAll(async () => {
  await s?.stop();
});

async function rangeRequests(): Promise<number> {
  const text = await (await fetch(`${s.gateway.adminUrl}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(/^dsm_gateway_requests_total\{[^}]*status="206"[^}]*\} (\d+)/gm))
    n += Number(m[1]);
  return n;
}

describe('ffmpeg and ffprobe over HTTP', () => {
  it('probes a generated MP4 and decodes the frame after a seek, reading it by ranges', async () => {
    const mp4 = join(s.dir, 'test.mp4');
    // moov at the end (no +faststart): a reader has to seek, so ranges are exercised
    await run('ffmpeg', [
      '-v',
      'error',
      '-f',
      'lavfi',
      '-i',
      'testsrc=duration=6:size=320x240:rate=25',
      '-c:v',
      'libx264',
      '-preset',
      'ultrafast',
      '-g',
      '25',
      '-pix_fmt',
      'yuv420p',
      '-y',
      mp4,
    ]);
    const up = await curl([
      '-X',
      'POST',
      '--data-binary',
      `@${mp4}`,
      '-H',
      'Content-Type: application/octet-stream',
      `${s.gateway.url}/files?filename=test.mp4`,
    ]);
    const reply = JSON.parse(String(up.stdout)) as { url: string; contentType: string; size: number };
    expect(reply.size).toBe(statSync(mp4).size);
    // sniffed by the storage from the bytes
    expect(reply.contentType).toBe('video/mp4');

    const before = await rangeRequests();
    const probe = await run('ffprobe', [
      '-v',
      'error',
      '-show_entries',
      'format=duration:stream=codec_name,width,height',
      '-of',
      'json',
      `${reply.url}/test.mp4`,
    ]);
    const info = JSON.parse(probe.stdout) as {
      format: { duration: string };
      streams: { codec_name: string; width: number; height: number }[];
    };
    expect(Number(info.format.duration)).toBeCloseTo(6, 0);
    expect(info.streams[0]).toMatchObject({ codec_name: 'h264', width: 320, height: 240 });

    const frame = join(s.dir, 'frame.png');
    await run('ffmpeg', ['-v', 'error', '-ss', '4.2', '-i', reply.url, '-frames:v', '1', '-y', frame]);
    expect(existsSync(frame)).toBe(true);
    const png = await run('ffprobe', [
      '-v',
      'error',
      '-show_entries',
      'stream=width,height',
      '-of',
      'csv=p=0',
      frame,
    ]);
    expect(png.stdout.trim()).toBe('320,240');
    expect(await rangeRequests()).toBeGreaterThan(before);
  });
});
