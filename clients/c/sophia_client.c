/*
 * sophia_client: stream frames from a file through a Sophia server (libzmq).
 *
 * usage: sophia_client [-t TIMEOUT_MS] [-r SESSION_ID] [-R STATE_IN] [-i ID_OUT]
 *                      [-S STATE_OUT] [-k]
 *                      ENDPOINT INPUT_DIM IN_FILE OUT_FILE WS_0 IDS_0 [WS_1 IDS_1 ...]
 *
 *   IDS_n     "idx_0;...;idx_{B-1}": each stream's ID index in workspace n
 *             (B, the number of streams, is the number of fields).
 *   IN_FILE   raw little-endian float32 frames, N*B*INPUT_DIM per step in
 *             [n][b][i] order; "-" reads stdin.
 *   OUT_FILE  the replies, N*B*target_dim float32 per step in [n][b][k]
 *             order; "-" writes stdout.
 *
 * State snapshots (docs/PROTOCOL.md, section 2.1), all optional:
 *   -r SESSION_ID  after the handshake, resume the state the server saved under
 *                  this id when it was stopped with --state_dir
 *   -R STATE_IN    after the handshake (and -r), restore the state blob in this file
 *   -i ID_OUT      write the session's id (32 hex digits, no newline) to this file
 *   -S STATE_OUT   at end of input, fetch the state blob into this file
 *   -k             at end of input, keep the session open (no end frame), so a
 *                  server stopped with --state_dir saves it for -r
 *
 * It does the handshake, sends one request per frame, and at end of input (or
 * after an "error:" reply) sends the end frame, one NaN float, which gets no
 * reply. Floats are passed through as bytes, so the host's byte order does not
 * matter.
 *
 * Exit status: 0 done, 1 usage or I/O error, 2 the server answered "error:",
 * 3 no reply within the timeout.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define DEFAULT_TIMEOUT_MS 60000
#define END_LINGER_MS 1000

static const unsigned char NAN_LE[4] = {0x00, 0x00, 0xc0, 0x7f};

static void die(int status, const char *what, const char *detail)
{
    fprintf(stderr, "sophia_client: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    exit(status);
}

static size_t count_fields(const char *ids)
{
    size_t n = 1;
    for (; *ids; ids++)
        n += (*ids == ';');
    return n;
}

/* "ws_0;...;ws_{N-1};B\nIDS_0\n...\nIDS_{N-1}", malloc'ed. */
static char *make_handshake(int n_models, char **pairs, size_t *n_streams)
{
    size_t len = 32;
    for (int n = 0; n < 2 * n_models; n++)
        len += strlen(pairs[n]) + 2;
    char *text = malloc(len);
    if (!text)
        die(1, "out of memory", NULL);
    *n_streams = count_fields(pairs[1]);
    text[0] = '\0';
    for (int n = 0; n < n_models; n++) {
        const char *ws = pairs[2 * n], *ids = pairs[2 * n + 1];
        if (!*ws || strpbrk(ws, ";\n") || strchr(ids, '\n'))
            die(1, "workspace paths and ID lists must be one line, paths without ';'", ws);
        if (count_fields(ids) != *n_streams)
            die(1, "every IDS_n must list the same number of streams", ids);
        strcat(strcat(text, ws), ";");
    }
    sprintf(text + strlen(text), "%zu", *n_streams);
    for (int n = 0; n < n_models; n++)
        strcat(strcat(text, "\n"), pairs[2 * n + 1]);
    return text;
}

static void send_bytes(void *socket, const void *data, size_t size)
{
    if (zmq_send(socket, data, size, 0) < 0)
        die(1, "send failed", zmq_strerror(zmq_errno()));
}

/* Send the end frame (no reply comes), let it go out, close everything. */
static void end_session(void *context, void *socket)
{
    int linger = END_LINGER_MS;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    send_bytes(socket, NAN_LE, sizeof NAN_LE);
    zmq_close(socket);
    zmq_ctx_term(context);
}

/* Wait for one reply; exits on timeout, or ends the session on an "error:" reply. */
static void receive(void *context, void *socket, zmq_msg_t *reply, long timeout_ms)
{
    zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
    int rc;
    do
        rc = zmq_poll(&item, 1, timeout_ms);
    while (rc < 0 && zmq_errno() == EINTR);
    if (rc <= 0)
        die(3, "no reply within the timeout", NULL);
    if (zmq_msg_recv(reply, socket, 0) < 0)
        die(1, "receive failed", zmq_strerror(zmq_errno()));
    size_t size = zmq_msg_size(reply);
    if (size >= 6 && memcmp(zmq_msg_data(reply), "error:", 6) == 0) {
        fprintf(stderr, "sophia_client: server: %.*s\n", (int)size,
                (const char *)zmq_msg_data(reply));
        zmq_msg_close(reply);
        end_session(context, socket);
        exit(2);
    }
}

/* A whole file into a malloc'ed buffer. */
static unsigned char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die(1, "cannot open", path);
    size_t capacity = 1 << 16, got;
    unsigned char *data = malloc(capacity);
    *size = 0;
    while (data && (got = fread(data + *size, 1, capacity - *size, f)) > 0) {
        *size += got;
        if (*size == capacity)
            data = realloc(data, capacity *= 2);
    }
    if (!data)
        die(1, "out of memory", NULL);
    if (ferror(f) || fclose(f) != 0)
        die(1, "cannot read", path);
    return data;
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        die(1, "cannot write", path);
}

/* An extension request: COMMAND, then ARG (may be empty); waits for the reply. */
static void command(void *context, void *socket, const char *name, const void *arg,
                    size_t size, zmq_msg_t *reply, long timeout_ms)
{
    if (zmq_send(socket, name, strlen(name), ZMQ_SNDMORE) < 0)
        die(1, "send failed", zmq_strerror(zmq_errno()));
    send_bytes(socket, arg, size);
    receive(context, socket, reply, timeout_ms);
}

static void expect_ok(zmq_msg_t *reply, const char *what)
{
    if (zmq_msg_size(reply) != 2 || memcmp(zmq_msg_data(reply), "ok", 2))
        die(1, "unexpected reply to", what);
}

static int usage(const char *program)
{
    fprintf(stderr, "usage: %s [-t TIMEOUT_MS] [-r SESSION_ID] [-R STATE_IN] [-i ID_OUT] "
            "[-S STATE_OUT] [-k] ENDPOINT INPUT_DIM IN_FILE OUT_FILE "
            "WS_0 IDS_0 [WS_1 IDS_1 ...]\n", program);
    return 1;
}

int main(int argc, char **argv)
{
    long timeout_ms = DEFAULT_TIMEOUT_MS;
    const char *resume_id = NULL, *state_in = NULL, *id_out = NULL, *state_out = NULL;
    int keep = 0, arg = 1;
    /* Options first; ENDPOINT never starts with '-', while an IDS_n may. */
    while (arg < argc && argv[arg][0] == '-' && argv[arg][1] && !argv[arg][2]
           && strchr("trRiSk", argv[arg][1])) {
        char flag = argv[arg++][1];
        if (flag == 'k') {
            keep = 1;
            continue;
        }
        if (arg >= argc)
            return usage(argv[0]);
        const char *value = argv[arg++];
        if (flag == 't')
            timeout_ms = strtol(value, NULL, 10);
        else if (flag == 'r')
            resume_id = value;
        else if (flag == 'R')
            state_in = value;
        else if (flag == 'i')
            id_out = value;
        else
            state_out = value;
    }
    int n_models = (argc - arg - 4) / 2;
    long input_dim = argc > arg + 1 ? strtol(argv[arg + 1], NULL, 10) : 0;
    if (argc - arg < 6 || (argc - arg) % 2 || input_dim < 1 || timeout_ms < 1)
        return usage(argv[0]);
    const char *endpoint = argv[arg], *in_path = argv[arg + 2], *out_path = argv[arg + 3];
    FILE *in = strcmp(in_path, "-") ? fopen(in_path, "rb") : stdin;
    FILE *out = strcmp(out_path, "-") ? fopen(out_path, "wb") : stdout;
    if (!in || !out)
        die(1, "cannot open", !in ? in_path : out_path);

    size_t n_streams;
    char *handshake = make_handshake(n_models, argv + arg + 4, &n_streams);
    size_t frame_size = (size_t)n_models * n_streams * (size_t)input_dim * 4;
    unsigned char *frame = calloc(frame_size, 1);
    if (!frame)
        die(1, "out of memory", NULL);

    void *context = zmq_ctx_new();
    void *socket = zmq_socket(context, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(socket, endpoint) < 0)
        die(1, "cannot connect", zmq_strerror(zmq_errno()));

    zmq_msg_t reply;
    zmq_msg_init(&reply);
    send_bytes(socket, handshake, strlen(handshake));
    receive(context, socket, &reply, timeout_ms);
    if (zmq_msg_size(&reply) != 5 || memcmp(zmq_msg_data(&reply), "ready", 5))
        die(1, "unexpected handshake reply", NULL);
    if (resume_id) {
        command(context, socket, "resume", resume_id, strlen(resume_id), &reply, timeout_ms);
        expect_ok(&reply, "resume");
    }
    if (state_in) {
        size_t size;
        unsigned char *blob = read_file(state_in, &size);
        command(context, socket, "restore_state", blob, size, &reply, timeout_ms);
        expect_ok(&reply, "restore_state");
        free(blob);
    }
    if (id_out) {
        command(context, socket, "session_id", "", 0, &reply, timeout_ms);
        write_file(id_out, zmq_msg_data(&reply), zmq_msg_size(&reply));
    }

    size_t got, reply_size = 0, steps = 0;
    while ((got = fread(frame, 1, frame_size, in)) == frame_size) {
        send_bytes(socket, frame, frame_size);
        receive(context, socket, &reply, timeout_ms);
        size_t size = zmq_msg_size(&reply);
        if (steps++ == 0)
            reply_size = size;
        if (size != reply_size || size == 0 || size % (n_models * n_streams * 4))
            die(1, "reply of unexpected size", NULL);
        if (fwrite(zmq_msg_data(&reply), 1, size, out) != size)
            die(1, "cannot write", out_path);
    }
    int status = 0;
    if (got != 0 || ferror(in)) {
        fprintf(stderr, "sophia_client: %s: %s\n", in_path,
                ferror(in) ? "cannot read" : "input ends with a partial frame");
        status = 1;
    }
    if (state_out && status == 0) {
        command(context, socket, "fetch_state", "", 0, &reply, timeout_ms);
        write_file(state_out, zmq_msg_data(&reply), zmq_msg_size(&reply));
    }
    zmq_msg_close(&reply);
    if (keep && status == 0) {  /* the session stays open on the server */
        zmq_close(socket);
        zmq_ctx_term(context);
    } else {
        end_session(context, socket);
    }
    free(frame);
    free(handshake);
    if (fclose(out) != 0)
        die(1, "cannot write", out_path);
    fprintf(stderr, "sophia_client: %zu steps\n", steps);
    return status;
}
