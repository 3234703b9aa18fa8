import { Errno } from './constants.ts';

/**
 * A frame that cannot be accepted. `errno` is what goes on the wire, `message` is the
 * description (the seed's wording where one exists).
 */
export class ProtocolError extends Error {
  readonly code: string;
  readonly errno: number;
  constructor(message: string, errno: number = Errno.BAD_FIELD, code = 'DSM_ERR_PROTOCOL') {
    super(message);
    this.name = 'ProtocolError';
    this.errno = errno;
    this.code = code;
  }
}
