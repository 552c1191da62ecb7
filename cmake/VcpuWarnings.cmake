include_guard(GLOBAL)

# vcpu_project_warnings(<target>...)
#   Warnings every target built by this project uses: -Wall -Wextra -Werror.
#   INTERFACE libraries are skipped (they compile nothing).
function(vcpu_project_warnings)
    foreach(target IN LISTS ARGN)
        get_target_property(type ${target} TYPE)
        if(type STREQUAL "INTERFACE_LIBRARY" OR type STREQUAL "UTILITY")
            continue()
        endif()
        target_compile_options(${target} PRIVATE -Wall -Wextra -Werror)
    endforeach()
endfunction()

# vcpu_project_warnings_in_directory(<dir>)
#   Applies vcpu_project_warnings to every target defined in <dir> and its subdirectories, so
#   example and benchmark authors get the project warnings without having to ask for them.
function(vcpu_project_warnings_in_directory dir)
    get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
    if(targets)
        vcpu_project_warnings(${targets})
    endif()
    get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
    foreach(subdir IN LISTS subdirs)
        vcpu_project_warnings_in_directory(${subdir})
    endforeach()
endfunction()
