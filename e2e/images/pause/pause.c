/* The sandbox ("pause") process of the test bed's real nodes: holds the pod's namespaces,
 * reaps children, ends on SIGTERM or SIGINT. Built static (gcc -static) into an image from
 * scratch by node-images.sh, as no registry can be reached here. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
