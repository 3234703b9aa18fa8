/**
 * Incremental SHA-1 for tus `Upload-Checksum: sha1 …`. WebCrypto only digests whole buffers,
 * and a PATCH body is streamed to the storage chunk by chunk, so the hash has to be fed the
 * same way. Plain TypeScript keeps it runtime-neutral (Node and Workers).
 */
export class Sha1 {
  readonly #h = new Uint32Array([0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0]);
  readonly #block = new Uint8Array(64);
  readonly #w = new Uint32Array(80);
  #used = 0;
  #length = 0;
  #done = false;

  update(data: Uint8Array): this {
    if (this.#done) throw new Error('sha1: update after digest');
    this.#length += data.length;
    let i = 0;
    if (this.#used > 0) {
      const n = Math.min(64 - this.#used, data.length);
      this.#block.set(data.subarray(0, n), this.#used);
      this.#used += n;
      i = n;
      if (this.#used < 64) return this;
      this.#compress(this.#block, 0);
      this.#used = 0;
    }
    for (; i + 64 <= data.length; i += 64) this.#compress(data, i);
    if (i < data.length) {
      this.#block.set(data.subarray(i), 0);
      this.#used = data.length - i;
    }
    return this;
  }

  digest(): Uint8Array {
    if (!this.#done) {
      this.#done = true;
      const bits = this.#length * 8;
      const b = this.#block;
      b[this.#used++] = 0x80;
      if (this.#used > 56) {
        b.fill(0, this.#used);
        this.#compress(b, 0);
        this.#used = 0;
      }
      b.fill(0, this.#used, 56);
      const dv = new DataView(b.buffer, b.byteOffset, 64);
      dv.setUint32(56, Math.floor(bits / 0x100000000));
      dv.setUint32(60, bits >>> 0);
      this.#compress(b, 0);
    }
    const out = new Uint8Array(20);
    const dv = new DataView(out.buffer);
    for (let i = 0; i < 5; i++) dv.setUint32(i * 4, this.#h[i] as number);
    return out;
  }

  #compress(data: Uint8Array, off: number): void {
    const w = this.#w;
    for (let t = 0; t < 16; t++) {
      const j = off + t * 4;
      w[t] =
        (((data[j] as number) << 24) |
          ((data[j + 1] as number) << 16) |
          ((data[j + 2] as number) << 8) |
          (data[j + 3] as number)) >>>
        0;
    }
    for (let t = 16; t < 80; t++) {
      const x = (w[t - 3] as number) ^ (w[t - 8] as number) ^ (w[t - 14] as number) ^ (w[t - 16] as number);
      w[t] = (x << 1) | (x >>> 31);
    }
    const h = this.#h;
    let a = h[0] as number;
    let b = h[1] as number;
    let c = h[2] as number;
    let d = h[3] as number;
    let e = h[4] as number;
    for (let t = 0; t < 80; t++) {
      let f: number;
      let k: number;
      if (t < 20) {
        f = (b & c) | (~b & d);
        k = 0x5a827999;
      } else if (t < 40) {
        f = b ^ c ^ d;
        k = 0x6ed9eba1;
      } else if (t < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8f1bbcdc;
      } else {
        f = b ^ c ^ d;
        k = 0xca62c1d6;
      }
      const tmp = (((a << 5) | (a >>> 27)) + f + e + k + (w[t] as number)) >>> 0;
      e = d;
      d = c;
      c = (b << 30) | (b >>> 2);
      b = a;
      a = tmp;
    }
    h[0] = ((h[0] as number) + a) >>> 0;
    h[1] = ((h[1] as number) + b) >>> 0;
    h[2] = ((h[2] as number) + c) >>> 0;
    h[3] = ((h[3] as number) + d) >>> 0;
    h[4] = ((h[4] as number) + e) >>> 0;
  }
}
