/* Port allocation and the instance environment (Marathon compatibility). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/launch.h"
#include "agent/ports.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_ports_dynamic_fixed_release(void **state)
{
    ports_t p;
    err_t err = {0};
    assert_int_equal(ports_init(&p, 20000, 20003, &err), 0);
    p.probe = false; /* exact picks, whatever else the host runs */
    int out[3];
    int want[3] = {0, 20001, 0};
    assert_int_equal(ports_alloc(&p, 3, want, out, &err), 0);
    assert_int_equal(out[1], 20001);
    assert_true(out[0] != 20001 && out[2] != 20001 && out[0] != out[2]);
    /* one port left in the range; asking for two fails and takes nothing */
    int two[2];
    assert_int_equal(ports_alloc(&p, 2, NULL, two, &err), -EADDRNOTAVAIL);
    assert_non_null(strstr(err.msg, "20000-20003"));
    int one;
    assert_int_equal(ports_alloc(&p, 1, NULL, &one, &err), 0);
    /* a fixed port that is taken is refused with the port named */
    int taken = 20001, got;
    assert_int_equal(ports_alloc(&p, 1, &taken, &got, &err), -EADDRINUSE);
    assert_non_null(strstr(err.msg, "port 20001"));
    ports_release(&p, 3, out);
    assert_int_equal(ports_alloc(&p, 1, &taken, &got, &err), 0);
    assert_int_equal(got, 20001);
    /* re-adoption reserves exactly, and refuses a port in use */
    int again = 20001;
    assert_int_equal(ports_reserve(&p, 1, &again, &err), -EADDRINUSE);
    ports_free(&p);
}

/* A port another process of the host listens on is skipped (and named in
 * the error when it was the last one); once it is closed it is handed out. */
static void test_ports_probe_skips_host_ports(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    int held = ntohs(a.sin_port);
    ports_t p;
    err_t err = {0};
    assert_int_equal(ports_init(&p, held, held, &err), 0);
    int got = 0;
    assert_int_equal(ports_alloc(&p, 1, NULL, &got, &err), -EADDRNOTAVAIL);
    assert_non_null(strstr(err.msg, "1 by other processes"));
    close(fd);
    assert_int_equal(ports_alloc(&p, 1, NULL, &got, &err), 0);
    assert_int_equal(got, held);
    ports_free(&p);
}

static void test_ports_range_parse(void **state)
{
    int lo, hi;
    err_t err = {0};
    assert_int_equal(ports_parse_range("20000-32000", &lo, &hi, &err), 0);
    assert_int_equal(lo, 20000);
    assert_int_equal(hi, 32000);
    assert_int_equal(ports_parse_range("32000-20000", &lo, &hi, &err), -EINVAL);
    assert_int_equal(ports_parse_range("0-10", &lo, &hi, &err), -EINVAL);
    assert_int_equal(ports_parse_range("1-70000", &lo, &hi, &err), -EINVAL);
    assert_int_equal(ports_parse_range("abc", &lo, &hi, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "abc"));
}

static const char *env_get(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static void test_launch_env_and_argv(void **state)
{
    json_t *spec = json_loads("{\"cmd\": \"serve --port $PORT0\", \"env\": {\"A\": \"1\", "
                              "\"PORT0\": \"spoofed\", \"S\": {\"secret\": \"x\"}},"
                              "\"portDefinitions\": [{\"port\": 0, \"name\": \"http-api\"}, "
                              "{\"port\": 9000}]}",
                              0, NULL);
    launch_ports_t lp;
    assert_int_equal(launch_ports_from_spec(spec, &lp, NULL), 0);
    assert_int_equal(lp.n, 2);
    assert_int_equal(lp.want[1], 0); /* without requirePorts the number is not a host port */
    int ports[2] = {20005, 20006};
    launch_ctx_t ctx = {.instance_id = "a_b.0123456789ab",
                        .app_id = "/a/b",
                        .version = 7,
                        .node = "n1",
                        .host = "10.0.0.5",
                        .sandbox = "/sb",
                        .ports = ports,
                        .port_info = &lp};
    char **argv, **envp;
    assert_int_equal(launch_build(spec, &ctx, &argv, &envp, NULL), 0);
    assert_string_equal(argv[0], "/bin/sh");
    assert_string_equal(argv[1], "-c");
    assert_string_equal(argv[2], "serve --port $PORT0");
    assert_null(argv[3]);
    assert_string_equal(env_get(envp, "A"), "1");
    assert_string_equal(env_get(envp, "PORT0"), "20005"); /* drover's value wins */
    assert_string_equal(env_get(envp, "PORT1"), "20006");
    assert_string_equal(env_get(envp, "PORT"), "20005");
    assert_string_equal(env_get(envp, "PORTS"), "20005,20006");
    assert_string_equal(env_get(envp, "PORT_HTTP_API"), "20005");
    assert_string_equal(env_get(envp, "HOST"), "10.0.0.5");
    assert_string_equal(env_get(envp, "MARATHON_APP_ID"), "/a/b");
    assert_string_equal(env_get(envp, "MARATHON_APP_VERSION"), "7");
    assert_string_equal(env_get(envp, "MESOS_TASK_ID"), "a_b.0123456789ab");
    assert_string_equal(env_get(envp, "DROVER_NODE"), "n1");
    assert_string_equal(env_get(envp, "MESOS_SANDBOX"), "/sb");
    assert_non_null(env_get(envp, "PATH"));
    assert_null(env_get(envp, "S")); /* secret references are not passed as text */
    launch_strv_free(argv);
    launch_strv_free(envp);
    launch_ports_free(&lp);
    json_decref(spec);
}

static void test_launch_args_mappings_and_errors(void **state)
{
    json_t *spec = json_loads("{\"args\": [\"/bin/echo\", \"hi\"], \"requirePorts\": true, "
                              "\"container\": {\"docker\": {\"portMappings\": "
                              "[{\"containerPort\": 80, \"hostPort\": 8080}, "
                              "{\"containerPort\": 81, \"hostPort\": 0}]}}}",
                              0, NULL);
    launch_ports_t lp;
    assert_int_equal(launch_ports_from_spec(spec, &lp, NULL), 0);
    assert_int_equal(lp.n, 2);
    assert_int_equal(lp.want[0], 8080);
    assert_int_equal(lp.want[1], 0);
    int ports[2] = {8080, 20000};
    launch_ctx_t ctx = {.instance_id = "i",
                        .app_id = "/a",
                        .node = "n",
                        .host = "h",
                        .sandbox = "/s",
                        .ports = ports,
                        .port_info = &lp};
    char **argv, **envp;
    assert_int_equal(launch_build(spec, &ctx, &argv, &envp, NULL), 0);
    assert_string_equal(argv[0], "/bin/echo");
    assert_string_equal(argv[1], "hi");
    launch_strv_free(argv);
    launch_strv_free(envp);
    launch_ports_free(&lp);
    json_decref(spec);

    json_t *none = json_loads("{\"id\": \"/x\"}", 0, NULL);
    err_t err = {0};
    assert_int_equal(launch_build(none, &ctx, &argv, &envp, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "no cmd or args"));
    json_decref(none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ports_dynamic_fixed_release),
        cmocka_unit_test(test_ports_range_parse),
        cmocka_unit_test(test_ports_probe_skips_host_ports),
        cmocka_unit_test(test_launch_env_and_argv),
        cmocka_unit_test(test_launch_args_mappings_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
