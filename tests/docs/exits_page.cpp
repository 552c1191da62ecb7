// docs/exits.md cannot drift from the code (ctest docs.exits): for each architecture, every type
// in vcpu::arch::<arch>::exit_types is named, as `vcpu::exit_name<E>()` in backquotes, in the
// page's "## <arch>" section, and every exit that section's table lists ("| `vcpu::...` |") is
// one of them.
//   vcpu_docs_exits <path to docs/exits.md>
#include <arch/aarch64/arch.hpp>
#include <arch/riscv64/arch.hpp>
#include <arch/x86_64/arch.hpp>
#include <vcpu/exit_name.hpp>
#include <vcpu/meta.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <string_view>

namespace {

template <class... Es>
std::set<std::string> names(vcpu::type_list<Es...>) {
    return {std::string(vcpu::exit_name<Es>())...};
}

/// The text from the line "## <title>" (a title followed by the end of the line or a space) to
/// the next "## " heading, or "" when there is no such heading.
std::string section(const std::string& page, std::string_view title) {
    const std::string head = "\n## " + std::string(title);
    for (std::size_t at = page.find(head); at != std::string::npos; at = page.find(head, at + 1)) {
        const std::size_t after = at + head.size();
        if (after < page.size() && page[after] != '\n' && page[after] != ' ') continue;
        const std::size_t end = page.find("\n## ", after);
        return page.substr(after, end == std::string::npos ? std::string::npos : end - after);
    }
    return {};
}

int check(const std::string& page, std::string_view arch, const std::set<std::string>& exits) {
    int failures = 0;
    const std::string text = section(page, arch);
    if (text.empty()) {
        std::printf("docs/exits.md: no \"## %.*s\" section\n", int(arch.size()), arch.data());
        return 1;
    }
    for (const auto& name : exits) {
        if (text.find("`" + name + "`") == std::string::npos) {
            std::printf("docs/exits.md, ## %.*s: exit type `%s` (in exit_types) is not described\n",
                        int(arch.size()), arch.data(), name.c_str());
            ++failures;
        }
    }
    // Table rows: "| `name` |" at the start of a line.
    const std::string row = "\n| `";
    for (std::size_t at = text.find(row); at != std::string::npos; at = text.find(row, at + 1)) {
        const std::size_t from = at + row.size();
        const std::size_t to = text.find('`', from);
        const std::string name = text.substr(from, to - from);
        if (exits.count(name) == 0) {
            std::printf("docs/exits.md, ## %.*s: the table lists `%s`, which is not in exit_types\n",
                        int(arch.size()), arch.data(), name.c_str());
            ++failures;
        }
    }
    std::printf("docs/exits.md, ## %.*s: %zu exit types checked\n", int(arch.size()), arch.data(),
                exits.size());
    return failures;
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <docs/exits.md>\n", argv[0]);
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) {
        std::printf("cannot read %s\n", argv[1]);
        return 1;
    }
    const std::string page = "\n" + std::string(std::istreambuf_iterator<char>(in), {});
    int failures = 0;
    failures += check(page, "x86_64", names(vcpu::arch::x86_64::exit_types{}));
    failures += check(page, "aarch64", names(vcpu::arch::aarch64::exit_types{}));
    failures += check(page, "riscv64", names(vcpu::arch::riscv64::exit_types{}));
    return failures == 0 ? 0 : 1;
}
