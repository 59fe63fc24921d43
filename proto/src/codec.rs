//! The codec of the generated gRPC services and clients: prost's, with the size of the buffer
//! each call starts encoding and decoding in set once per process.
//!
//! tonic starts every call with an 8 KiB decode buffer and an 8 KiB encode buffer; an etcd
//! put is ~300 bytes each way, so a server answering 20k puts/s allocated and touched ~320 MB/s
//! of buffers it did not use (allocation was a quarter of the gRPC call's own time at 256
//! clients). Buffers grow as a message needs (tonic reserves its length), so a smaller start
//! costs a big message one reallocation, no more.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// tonic's own defaults: what clients (the load generator among them) keep unless they set it.
static BUFFER_SIZE: AtomicUsize = AtomicUsize::new(8 * 1024);
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Sets the initial buffer size of every call this process encodes or decodes from now on.
pub fn set_buffer_size(bytes: usize) {
    BUFFER_SIZE.store(bytes.max(64), Ordering::Relaxed);
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE.load(Ordering::Relaxed), YIELD_THRESHOLD)
}

/// prost's encoding with [`set_buffer_size`]'s buffers.
#[derive(Debug, Clone)]
pub struct EtcdCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for EtcdCodec<T, U> {
    fn default() -> Self {
        EtcdCodec(PhantomData)
    }
}

impl<T, U> Codec for EtcdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
