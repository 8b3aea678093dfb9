// Tests for dataplane/src/stage_cycles.h: each stage's cycles per packet exclude the stages timed
// inside it, a report is one line with every stage and their sum and starts the count over, and in
// the product's build (no -Dstage_cycles) the worker's timing calls record nothing (scripts/test's
// ASan build has it on: the other way round there).
#include "stage_cycles.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace espresso::dp {
namespace {

stage_clock nested_example()
{
    stage_clock c;
    c.add_cycles(stage::rx, 50);
    c.add_cycles(stage::pass, 1000);   // holds inbound, spd and route_tx
    c.add_cycles(stage::inbound, 300); // holds esp_in
    c.add_cycles(stage::esp_in, 200);
    c.add_cycles(stage::spd, 400);      // holds policies
    c.add_cycles(stage::policies, 250); // holds esp_out
    c.add_cycles(stage::esp_out, 150);
    c.add_cycles(stage::route_tx, 100);
    return c;
}

TEST(StageCycles, EachStageExcludesTheStagesTimedInsideIt)
{
    stage_clock c = nested_example();
    EXPECT_EQ(c.per_packet(stage::rx), 0.0); // no packets yet
    c.count_packets(10, 0, stderr);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::rx), 5.0);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::pass), 20.0); // 1000 - 300 - 400 - 100
    EXPECT_DOUBLE_EQ(c.per_packet(stage::inbound), 10.0);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::esp_in), 20.0);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::spd), 15.0);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::policies), 10.0);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::esp_out), 15.0);
    EXPECT_DOUBLE_EQ(c.per_packet(stage::route_tx), 10.0);
}

TEST(StageCycles, ReportsOneLineEveryReportEveryPacketsAndStartsOver)
{
    FILE* out = std::tmpfile();
    ASSERT_NE(out, nullptr);
    stage_clock c = nested_example();
    c.count_packets(stage_clock::report_every - 1, 3, out);
    EXPECT_EQ(std::ftell(out), 0); // not yet
    c.count_packets(1, 3, out);
    std::rewind(out);
    char buf[512] = {};
    ASSERT_NE(std::fgets(buf, sizeof(buf), out), nullptr);
    const std::string line(buf);
    EXPECT_EQ(line.rfind("stage-cycles worker 3 tsc-hz ", 0), 0U) << line;
    for (const char* name : {" rx ", " pass ", " inbound ", " esp_in ", " spd ", " policies ", " esp_out ",
                             " route_tx ", " total "}) {
        EXPECT_NE(line.find(name), std::string::npos) << name << " in " << line;
    }
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(std::fgets(buf, sizeof(buf), out), nullptr); // one line
    std::fclose(out);
    c.count_packets(1, 3, stderr);
    EXPECT_EQ(c.per_packet(stage::pass), 0.0); // the counts started over
}

TEST(StageCycles, TheStageBuildTimesWithTheTsc)
{
    if constexpr (!stage_cycles_enabled) {
        GTEST_SKIP() << "the product's build (no -Dstage_cycles)";
    } else {
        stage_clock c;
        const uint64_t start = stage_clock::now();
        EXPECT_NE(start, 0U);
        c.add(stage::esp_out, start);
        c.packets(1, 0);
        EXPECT_GE(c.per_packet(stage::esp_out), 0.0);
        EXPECT_LT(c.per_packet(stage::esp_out), 1e9); // a difference of two TSC readings, not a reading
    }
}

TEST(StageCycles, TheProductBuildRecordsNothing)
{
    if constexpr (stage_cycles_enabled) {
        GTEST_SKIP() << "built with -Dstage_cycles=true";
    } else {
        EXPECT_EQ(stage_clock::now(), 0U);
        stage_clock c;
        c.add(stage::esp_out, 0);
        c.packets(1, 0);
        c.count_packets(1, 0, stderr);
        EXPECT_EQ(c.per_packet(stage::esp_out), 0.0);
    }
}

} // namespace
} // namespace espresso::dp
