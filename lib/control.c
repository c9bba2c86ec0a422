/* strata: control socket server and client (see control.h).
 *
 * Design notes: the server runs one thread that accepts connections and
 * one thread per connection, which reads one request, runs it through
 * admin_run() with FILE streams that turn every write into a frame on
 * the socket (fopencookie), and closes the connection.  Commands may
 * therefore run at once (status while a scrub runs); admin_run()
 * serialises what must be.  A poll() with a timeout lets the accepting
 * thread notice shutdown; stopping cancels the long jobs and waits for
 * every command to end.
 *
 * The server never waits on a client without bound: a request must
 * arrive within REQUEST_TIMEOUT_MS, and output must find room in the
 * socket within OUTPUT_TIMEOUT_MS (a CLI suspended with ^Z, or piped
 * into a pager that stopped reading).  Past that the client is dropped
 * and the command goes on without it; while the server stops, both
 * waits are cut short, so that a stalled client cannot hold up
 * shutdown.
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "device.h"
#include "error.h"
#include "util.h"

#define MAX_ARGS 64
#define MAX_ARG 4096
#define REQUEST_TIMEOUT_MS 10000
#define OUTPUT_TIMEOUT_MS 30000
#define STOP_GRACE_MS 2000	/* output still delivered while stopping */

struct control_server {
  struct pool *p;
  char *path;
  int fd;
  pthread_t thread;
  atomic_bool stop;
  control_ctx_fn ctx_fn;
  pthread_mutex_t lock;		/* protects active */
  pthread_cond_t idle;		/* signalled when active drops */
  int active;			/* connection threads running */
};

struct conn {
  struct control_server *s;
  int fd;
};

/* Wait until FD is ready for EV, for at most LIMIT_MS, or STOP_GRACE_MS
 * once S stops (at once for a read: a request is not worth waiting for
 * then).  S NULL (the client side) waits as long as it takes.  Returns
 * 0, or -1 with errno. */
static int
wait_ready (struct control_server *s, int fd, short ev, int limit_ms)
{
  int waited = 0, stopped = -1;

  if (!s)
    return 0;
  for (;;) {
    struct pollfd pfd = { .fd = fd, .events = ev };
    int r;
    if (atomic_load (&s->stop) && stopped < 0) {
      if (ev == POLLIN) {
        errno = ESHUTDOWN;
        return -1;
      }
      stopped = waited;
    }
    if (waited >= limit_ms || (stopped >= 0 && waited - stopped >= STOP_GRACE_MS)) {
      errno = ETIMEDOUT;
      return -1;
    }
    r = poll (&pfd, 1, 200);
    if (r > 0)
      return 0;
    if (r == -1 && errno != EINTR)
      return -1;
    waited += 200;
  }
}

/* Send all of BUF; on the server (S given), without waiting on the
 * client past OUTPUT_TIMEOUT_MS for room in the socket. */
static int
write_all (struct control_server *s, int fd, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t w;
    if (wait_ready (s, fd, POLLOUT, OUTPUT_TIMEOUT_MS) == -1)
      return -1;
    w = send (fd, p, len, MSG_NOSIGNAL | (s ? MSG_DONTWAIT : 0));
    if (w == -1) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      return -1;
    }
    p += w;
    len -= w;
  }
  return 0;
}

/* The client's stop request on a signal (control_call_stop_on). */
static volatile sig_atomic_t *stop_flag;
static int stop_argc;
static char **stop_argv;
static const char *call_path;
static bool stop_sent;

void
control_call_stop_on (volatile sig_atomic_t *flag, int argc, char **argv)
{
  stop_flag = flag;
  stop_argc = argc;
  stop_argv = argv;
}

/* A read of the client was interrupted: if by the stop signal, ask the
 * server to stop the job, once (its lines go to stderr). */
static void
client_interrupted (void)
{
  int code;

  if (!stop_flag || !*stop_flag || stop_sent || !call_path)
    return;
  stop_sent = true;
  control_call (call_path, stop_argc, stop_argv, stderr, stderr, &code);
}

/* Read all of BUF; on the server (S given), the request must come
 * within REQUEST_TIMEOUT_MS. */
static int
read_all (struct control_server *s, int fd, void *buf, size_t len)
{
  char *p = buf;

  while (len > 0) {
    ssize_t r;
    if (wait_ready (s, fd, POLLIN, REQUEST_TIMEOUT_MS) == -1)
      return -1;
    if (!s)
      client_interrupted ();	/* a signal that came between reads */
    r = read (fd, p, len);
    if (r == -1) {
      if (errno == EINTR) {
        if (!s)
          client_interrupted ();
        continue;
      }
      return -1;
    }
    if (r == 0) {
      errno = EPIPE;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

/* The output side of one connection: its frames go out whole, one at a
 * time (a command's threads may write its two streams at once), and
 * after a failed send (DEAD) none do: a frame cut short would garble
 * the rest. */
struct conn_out {
  pthread_mutex_t lock;
  bool dead;
};

/* One frame to the client of S on FD. */
static int
send_frame (struct control_server *s, int fd, struct conn_out *co, char kind,
            const void *data, uint32_t len)
{
  uint8_t hdr[5];
  uint32_t le = htole32 (len);
  int r = 0;

  hdr[0] = kind;
  memcpy (hdr + 1, &le, 4);
  pthread_mutex_lock (&co->lock);
  if (co->dead)
    r = -1;
  else if (write_all (s, fd, hdr, 5) == -1
           || (len && write_all (s, fd, data, len) == -1)) {
    co->dead = true;
    r = -1;
  }
  pthread_mutex_unlock (&co->lock);
  return r;
}

struct frame_cookie {
  struct control_server *s;
  int fd;
  struct conn_out *co;
  char kind;
};

static ssize_t
frame_write (void *c, const char *buf, size_t len)
{
  struct frame_cookie *fc = c;

  /* A client that went away (or stalled) must not stop the command. */
  send_frame (fc->s, fc->fd, fc->co, fc->kind, buf, len);
  return len;
}

static void
serve_one (struct control_server *s, int fd)
{
  uint32_t argc;
  char *argv[MAX_ARGS + 1] = { NULL };
  struct conn_out co = { .lock = PTHREAD_MUTEX_INITIALIZER };
  struct frame_cookie oc = { s, fd, &co, 'o' }, ec = { s, fd, &co, 'e' };
  cookie_io_functions_t io = { .write = frame_write };
  struct admin_ctx ctx = { .online = true };
  FILE *out, *err;
  int32_t code;

  if (read_all (s, fd, &argc, 4) == -1)
    return;
  argc = le32toh (argc);
  if (argc == 0 || argc > MAX_ARGS) {
    const char msg[] = "strata: bad control request\n";
    send_frame (s, fd, &co, 'e', msg, sizeof msg - 1);
    code = htole32 (2);
    send_frame (s, fd, &co, 'x', &code, 4);
    return;
  }
  for (uint32_t i = 0; i < argc; i++) {
    uint32_t len;
    if (read_all (s, fd, &len, 4) == -1)
      goto out;
    len = le32toh (len);
    if (len > MAX_ARG || !(argv[i] = calloc (1, len + 1))
        || read_all (s, fd, argv[i], len) == -1)
      goto out;
  }
  out = fopencookie (&oc, "w", io);
  err = fopencookie (&ec, "w", io);
  if (!out || !err) {
    if (out)
      fclose (out);
    if (err)
      fclose (err);
    goto out;
  }
  setvbuf (out, NULL, _IOLBF, 0);
  setvbuf (err, NULL, _IOLBF, 0);
  if (s->ctx_fn)
    s->ctx_fn (&ctx);
  code = admin_run (s->p, &ctx, argc, argv, out, err);
  fclose (out);
  fclose (err);
  code = htole32 (code);
  send_frame (s, fd, &co, 'x', &code, 4);
 out:
  for (uint32_t i = 0; i < argc && i < MAX_ARGS; i++)
    free (argv[i]);
}

static void *
conn_thread (void *arg)
{
  struct conn *c = arg;
  struct control_server *s = c->s;

  serve_one (s, c->fd);
  close (c->fd);
  free (c);
  device_thread_exit ();	/* this thread's io_uring */
  pthread_mutex_lock (&s->lock);
  s->active--;
  pthread_cond_broadcast (&s->idle);
  pthread_mutex_unlock (&s->lock);
  return NULL;
}

static void *
server_thread (void *arg)
{
  struct control_server *s = arg;

  while (!atomic_load (&s->stop)) {
    struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
    struct conn *c;
    pthread_attr_t a;
    pthread_t t;
    int fd;

    if (poll (&pfd, 1, 200) <= 0)
      continue;
    fd = accept4 (s->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1)
      continue;
    if (!(c = malloc (sizeof *c))) {
      close (fd);
      continue;
    }
    *c = (struct conn) { s, fd };
    pthread_mutex_lock (&s->lock);
    s->active++;
    pthread_mutex_unlock (&s->lock);
    pthread_attr_init (&a);
    pthread_attr_setdetachstate (&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create (&t, &a, conn_thread, c) != 0) {
      /* No thread: serve it here. */
      conn_thread (c);
    }
    pthread_attr_destroy (&a);
  }
  return NULL;
}

struct control_server *
control_server_start (struct pool *p, const char *path, control_ctx_fn ctx_fn)
{
  struct control_server *s = calloc (1, sizeof *s);
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int e;

  if (!s) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  if (strlen (path) >= sizeof sa.sun_path) {
    free (s);
    strata_error (ENAMETOOLONG, "control socket path %s is too long", path);
    return NULL;
  }
  strcpy (sa.sun_path, path);
  s->p = p;
  s->ctx_fn = ctx_fn;
  pthread_mutex_init (&s->lock, NULL);
  pthread_cond_init (&s->idle, NULL);
  s->fd = -1;
  s->path = strdup (path);
  if (!s->path) {
    strata_error (ENOMEM, "out of memory");
    goto fail;
  }
  s->fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->fd == -1) {
    strata_error (errno, "socket: %m");
    goto fail;
  }
  /* Create the directory (one level, like /run/strata) if needed. */
  {
    char *dir = strdup (path), *slash = dir ? strrchr (dir, '/') : NULL;
    if (!dir) {
      strata_error (ENOMEM, "out of memory");
      goto fail;
    }
    if (slash && slash != dir) {
      *slash = '\0';
      if (mkdir (dir, 0755) == -1 && errno != EEXIST) {
        strata_error (errno, "control socket directory %s: %m", dir);
        free (dir);
        goto fail;
      }
    }
    free (dir);
  }
  /* We hold the pool's lock, so a socket file left here is stale.  The
   * socket is the owner's alone (every verb can change the pool): Linux
   * creates the file with the mode of the socket, less the umask, so no
   * one else can connect between bind() and chmod(). */
  unlink (path);
  if (fchmod (s->fd, 0600) == -1
      || bind (s->fd, (struct sockaddr *) &sa, sizeof sa) == -1
      || chmod (path, 0600) == -1
      || listen (s->fd, 16) == -1) {
    strata_error (errno, "control socket %s: %m", path);
    goto fail;
  }
  e = pthread_create (&s->thread, NULL, server_thread, s);
  if (e) {
    strata_error (e, "pthread_create: %s", strerror (e));
    unlink (path);
    goto fail;
  }
  return s;
 fail:
  if (s->fd >= 0)
    close (s->fd);
  free (s->path);
  free (s);
  return NULL;
}

void
control_server_stop (struct control_server *s)
{
  if (!s)
    return;
  atomic_store (&s->stop, true);
  pthread_join (s->thread, NULL);
  /* Long jobs save their place and stop; then every command has ended. */
  for (int k = 0; k < META_JOB_KINDS; k++)
    pool_job_cancel (s->p, k);
  pthread_mutex_lock (&s->lock);
  while (s->active > 0)
    pthread_cond_wait (&s->idle, &s->lock);
  pthread_mutex_unlock (&s->lock);
  close (s->fd);
  unlink (s->path);
  free (s->path);
  free (s);
}

int
control_call (const char *path, int argc, char **argv, FILE *out, FILE *err,
              int *exit_code)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  uint32_t v;
  int fd, e;

  if (strlen (path) >= sizeof sa.sun_path)
    return strata_error (ENAMETOOLONG, "control socket path %s is too long",
                         path);
  strcpy (sa.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return strata_error (errno, "socket: %m");
  if (connect (fd, (struct sockaddr *) &sa, sizeof sa) == -1) {
    e = errno;
    close (fd);
    return strata_error (e, "control socket %s: %s", path, strerror (e));
  }
  if (!call_path)
    call_path = path;		/* the stop request goes there too */
  v = htole32 (argc);
  if (write_all (NULL, fd, &v, 4) == -1)
    goto io;
  for (int i = 0; i < argc; i++) {
    size_t len = strlen (argv[i]);
    v = htole32 (len);
    if (write_all (NULL, fd, &v, 4) == -1
        || write_all (NULL, fd, argv[i], len) == -1)
      goto io;
  }
  for (;;) {
    uint8_t hdr[5];
    uint32_t len;
    char buf[4096];

    if (read_all (NULL, fd, hdr, 5) == -1)
      goto io;
    memcpy (&len, hdr + 1, 4);
    len = le32toh (len);
    if (hdr[0] == 'x') {
      int32_t code;
      if (len != 4 || read_all (NULL, fd, &code, 4) == -1)
        goto io;
      *exit_code = (int32_t) le32toh (code);
      close (fd);
      return 0;
    }
    while (len > 0) {
      uint32_t n = MIN (len, sizeof buf);
      if (read_all (NULL, fd, buf, n) == -1)
        goto io;
      fwrite (buf, 1, n, hdr[0] == 'e' ? err : out);
      len -= n;
    }
    fflush (hdr[0] == 'e' ? err : out);
  }
 io:
  e = errno;
  close (fd);
  return strata_error (e == ENOENT || e == ECONNREFUSED ? EPROTO : e,
                       "control socket %s: the connection ended before the "
                       "command did (%s): the server stopped, or dropped "
                       "this client after it read nothing for 30 s; "
                       "'strata status' shows what runs", path,
                       strerror (e));
}
